"""``millstream demo``: the example order service with simulated payments, on one machine.

Runs ``examples.orders`` (from the working directory: a millstream
checkout) on the embedded SQLite broker and store under
``.millstream/demo/``, with a payment simulator feeding it, some events
poisoned on purpose. It prints where everything is and a development
token for the protected routes, then serves until Ctrl-C, which drains
gracefully.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
from rich.console import Console

from millstream.errors import ConfigError

__all__ = ["banner", "dev_token", "prepare_demo", "with_simulator"]

DEMO_DIR = Path(".millstream") / "demo"
EXAMPLE_ORDER = (
    '{"customer_id": "c-1", "items": [{"sku": "mug", "quantity": 2, "unit_price": "9.50"}]}'
)


def dev_token(secret: str, hours: float = 24.0) -> str:
    """An HS256 token for the demo's protected routes, valid for ``hours``."""
    now = int(time.time())
    return jwt.encode(
        {"sub": "demo", "iat": now, "exp": now + int(hours * 3600)}, secret, algorithm="HS256"
    )


def _development_secret() -> str:
    """The demo's JWT secret, made once and kept in ``.millstream/demo/jwt-secret`` (readable
    by its owner only), so a token printed before a restart still works after it."""
    path = DEMO_DIR / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret


def prepare_demo(*, rate: float, poison_every: int) -> tuple[Any, str]:
    """The order service app with the simulator attached, and a development token.

    Settings already in the environment win; the demo fills in only what is
    missing, so ``MILLSTREAM_BROKER_URL=redis://... millstream demo`` runs it
    on Redis.
    """
    os.environ.setdefault("MILLSTREAM_BROKER_URL", f"sqlite:///./{DEMO_DIR}/broker.db")
    os.environ.setdefault("MILLSTREAM_STORE_URL", f"sqlite:///./{DEMO_DIR}/state.db")
    secret = os.environ.setdefault("MILLSTREAM_JWT_SECRET", _development_secret())
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        service = importlib.import_module("examples.orders")
        simulator_module = importlib.import_module("examples.orders.simulator")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("examples"):
            raise  # a missing dependency, not a missing checkout
        raise ConfigError(
            f"millstream demo runs the example order service (examples/orders) from a "
            f"millstream checkout, and none is here ({exc}); run it from the repository's "
            "root, e.g. `make demo`"
        ) from exc
    simulator = simulator_module.PaymentSimulator(service.ms, rate=rate, poison_every=poison_every)
    return with_simulator(service.app, simulator), dev_token(secret)


def with_simulator(app: Any, simulator: Any) -> Any:
    """``app`` (a FastAPI app) with ``simulator.running()`` inside its lifespan."""
    outer = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(target: Any) -> AsyncIterator[Any]:
        async with outer(target) as state, simulator.running():
            yield state

    app.router.lifespan_context = lifespan
    return app


def banner(console: Console, base: str, token: str) -> None:
    """Where everything is, and a request to paste."""
    console.print(f"\n[bold]millstream demo[/]: the order service at [link={base}]{base}[/]\n")
    for label, path in (
        ("console", "/console"),
        ("API docs", "/docs"),
        ("orders API (POST an order, GET /api/v1/orders/{id})", "/api/v1/orders"),
        ("readiness", "/health/ready"),
        ("consumers health", "/health/consumers"),
        ("health details", "/actuator/health"),
        ("metrics", "/metrics"),
        ("consumers (admin)", "/admin/consumers"),
        ("dead letters", "/admin/consumers/payments/dead-letters"),
    ):
        console.print(f"  {label:<18} {base}{path}")
    console.print("\n[bold]development token[/] (valid 24 h, for /api, /admin and the console):")
    console.print(token, soft_wrap=True)
    console.print("\n[bold]try[/]:")
    console.print(f"  export TOKEN={token}", soft_wrap=True, highlight=False)
    console.print(
        f'  curl -s -X POST {base}/api/v1/orders -H "Authorization: Bearer $TOKEN" '
        f"-H 'content-type: application/json' -d '{EXAMPLE_ORDER}'",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f'  curl -s {base}/admin/consumers -H "Authorization: Bearer $TOKEN"',
        soft_wrap=True,
        highlight=False,
    )
    broker = os.environ.get("MILLSTREAM_BROKER_URL", "")
    console.print(
        f"  millstream dlq list payments --group orders --broker {broker}",
        soft_wrap=True,
        highlight=False,
    )
    console.print("\nCtrl-C stops it gracefully.\n")
