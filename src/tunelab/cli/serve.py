"""`tunelab serve`: runs and bundles over HTTP."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import PRECISION_HELP, quiet_libraries
from tunelab.errors import TunelabError

KEYS_HELP = ("a file of API keys, one per line: KEY (or sha256:HEX) [models=NAME,NAME] [rate=N/s|N/min] [admin]; "
             "$TUNELAB_API_KEYS adds more (';' between keys)")


def is_loopback(host: str) -> bool:
    """Whether `host` reaches this machine only: a loopback address, or a name that resolves to loopback ones."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            raise TunelabError(f"cannot resolve --host {host}") from None
        return all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


@app.command()
def serve(
    sources: Annotated[list[str] | None, typer.Argument(help="runs and bundles to serve, each named by its folder "
                                                             "(a bundle's tasks by their names), or NAME=PATH")] = None,
    base: Annotated[list[str] | None, typer.Option(help="a causal LM to serve bare, under its name (smollm2, a "
                                                        "folder or a hub id); repeat for more")] = None,
    host: Annotated[str, typer.Option(help="the address to listen on; any but loopback needs --api-keys")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8000,
    api_keys: Annotated[Path | None, typer.Option(help=KEYS_HELP)] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="rows answered together at most")] = 32,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="how long a batch waits for more rows")] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="requests waiting per model before the server answers "
                                                       "503")] = 256,
    max_body: Annotated[int, typer.Option(min=1, help="the largest request body, in bytes (413 above)")] = 1 << 20,
    max_inputs: Annotated[int, typer.Option(min=1, help="texts per request at most (422 above)")] = 64,
    max_input_chars: Annotated[int, typer.Option(min=1, help="characters per text at most (422 above)")] = 20_000,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per request at most")] = 1024,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds a request may take (504 after)")] = 60.0,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """Serve trained runs and bundles over HTTP: /v1/predict for classification, regression, NER and QA (every
    sentence task of a base model in mixed micro-batches on one copy of it), OpenAI-compatible /v1/completions and
    /v1/chat/completions for generation runs and bare causal LMs, /v1/score, /v1/models, run-time loading at
    /v1/adapters, /metrics. The OpenAPI schema is at /docs and /openapi.json."""
    import uvicorn

    from tunelab.serve.app import create_app
    from tunelab.serve.keys import read_keys
    from tunelab.serve.models import ServedModels
    from tunelab.serve.server import Limits

    if not sources and not base:
        raise TunelabError("nothing to serve: give run directories or bundles, or --base MODEL")
    keys = read_keys(api_keys)
    if keys is None and not is_loopback(host):
        raise TunelabError(f"--host {host} is reachable from other machines: give --api-keys FILE (or set "
                           f"TUNELAB_API_KEYS), or listen on 127.0.0.1")
    quiet_libraries()
    models = ServedModels(precision)
    with console.status("loading the models"):
        if sources:
            models.load(sources)
        for name in base or []:
            models.load_base(name)
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_body_bytes=max_body,
                    max_inputs=max_inputs, max_input_chars=max_input_chars, max_tokens=max_tokens, timeout_s=timeout)
    console.print(served_table(models, f"http://{host}:{port}"))
    console.print(f"API keys: {len(keys.keys)}" if keys else "no API keys: open to this machine only")
    uvicorn.run(create_app(models, keys, limits), host=host, port=port, log_level="warning")


def served_table(models, url: str) -> Table:
    from tunelab.serve.models import LanguageModel

    table = Table(title=escape(f"serving at {url} (OpenAPI: {url}/docs)"))
    for column in ("model", "task", "strategy", "base", "endpoint"):
        table.add_column(column)
    for served in models.entries.values():
        endpoint = "/v1/predict" if not isinstance(served.engine, LanguageModel) else \
            "/v1/completions, /v1/chat/completions, /v1/score"
        table.add_row(escape(served.name), served.task, served.strategy or "-", escape(served.base), endpoint)
    return table
