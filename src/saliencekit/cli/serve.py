"""``saliencekit serve``: the interactive web explorer."""

from __future__ import annotations

import click

from .options import apply_threads, cpu_snapshot, load_model, model_label, model_options, model_spec, resolve_device, \
    threads_option


def register(main: click.Group) -> None:
    main.add_command(serve_cmd)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. The default is loopback only; anything else exposes the server.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@model_options
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the model runs.")
@threads_option
@click.option("--max-upload-mb", default=10.0, show_default=True, type=click.FloatRange(0.01, 200),
              help="Largest accepted upload.")
def serve_cmd(host, port, model_args, device, threads, max_upload_mb):
    """Start the web explorer: upload a photo, compare saliency maps, download them."""
    load = cpu_snapshot()     # how busy the CPUs are while this command starts (the default --threads)
    device = resolve_device(device)
    spec = model_spec(model_args)
    model = model_label(spec)
    try:
        import uvicorn

        from ..web.app import LOOPBACK_HOSTS, create_app, is_loopback
    except ImportError as e:  # pragma: no cover - declared dependencies
        raise click.ClickException(f"the web explorer needs starlette and uvicorn ({e}); "
                                   f"reinstall saliencekit") from None
    n_threads, why = apply_threads(threads, load)
    click.echo(f"torch threads: {n_threads} ({why})", err=True)
    net = load_model(spec, device)
    if not is_loopback(host):
        click.echo(f"warning: binding to {host}: the explorer is reachable from other machines; it has no "
                   f"authentication.", err=True)
    app = create_app(net, model, max_upload_bytes=int(max_upload_mb * 1_000_000),
                     allowed_hosts=LOOPBACK_HOSTS if is_loopback(host) else None)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"saliencekit explorer: http://{shown}:{port}/  (model {model} on {device}; Ctrl+C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
