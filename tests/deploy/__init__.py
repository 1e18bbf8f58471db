"""The deployment files a team ships millstream with: the Dockerfile, deploy/compose.yaml and
deploy/k8s/, checked against their formats' schemas and against the service they run."""
