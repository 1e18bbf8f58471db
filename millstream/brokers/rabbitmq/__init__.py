"""The rabbitmq broker adapter."""
