"""``saliencekit samples DIR``: the bundled sample photos written as image files, so the README's
examples (and a user's first try) have real files to read."""

from __future__ import annotations

from pathlib import Path

import click


def register(main: click.Group) -> None:
    main.add_command(samples_cmd)


@click.command("samples")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--overwrite", is_flag=True,
              help="Replace files of the same names that hold other pictures (kept by default).")
def samples_cmd(directory: Path, overwrite: bool):
    """Write the bundled sample photos (a cat, chelsea.png, and an espresso, coffee.png) into DIRECTORY
    as lossless PNG files, the same pixels `saliencekit explain` uses when given no images.

    DIRECTORY is created if needed. A file that is already there with the same picture is left as
    it is; one with another picture is kept unless --overwrite is given.
    """
    from ..data import write_samples

    try:
        results = write_samples(directory, overwrite=overwrite)
    except (NotADirectoryError, FileExistsError) as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1], param_hint="DIRECTORY") from None
    except OSError as e:
        raise click.ClickException(f"cannot write the samples into {directory}: {e.strerror or e}") from None
    kept = []
    for path, what in results:
        if what == "written":
            click.echo(f"wrote {path}")
        elif what == "unchanged":
            click.echo(f"{path} is already there (same picture)")
        else:
            kept.append(path)
            click.echo(f"kept {path}: it holds another picture (use --overwrite to replace it)", err=True)
    if kept:
        raise SystemExit(1)
