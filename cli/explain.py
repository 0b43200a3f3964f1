"""``lobstream explain``: a PNG of what drove a model's prediction at one row of LOB files
(:func:`lobstream.replay.backtest.explain.explain_files`)."""

from __future__ import annotations

import json

import click

from lobstream.cli.options import FILES, FORMAT, MODEL, REGISTRY, SKIP_BAD, json_flag, registry_from


@click.command("explain")
@FILES
@MODEL
@click.option(
    "--at",
    "at",
    default=None,
    help=(
        "Explain the last row at or before this time: ns since the epoch, an ISO datetime "
        "(naive = UTC) or a UTC time of day on the first row's date."
    ),
)
@click.option(
    "--row",
    "row",
    type=click.IntRange(0),
    default=None,
    help="Explain this feature row (0-based over the files, arrival order).",
)
@click.option(
    "--top",
    "top",
    type=click.IntRange(1),
    default=None,
    help="Explain the N most confident signals (max of p_down, p_up) of the files.",
)
@click.option(
    "--min-gap",
    type=click.IntRange(0),
    default=None,
    help="With --top: rows closer than this to a better one are skipped (default T).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="PNG to write; with --top N > 1, OUT's stem gets -1 .. -N (rank) before .png.",
)
@REGISTRY
@FORMAT
@SKIP_BAD
@click.option(
    "--head",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Multi-horizon artifacts: which head to explain (0 = the first horizon).",
)
@json_flag("Print one JSON object per PNG.")
def explain(
    files, model_path, at, row, top, min_gap, out, registry, fmt, skip_bad, head, as_json
) -> None:
    """Write PNG(s) of the input window of MODEL at a row of FILES, with the attribution of the
    predicted class over it (Grad-CAM for CNN-type models, input x gradient for others)."""
    from lobstream.models.artifact import ArtifactError
    from lobstream.replay.backtest.explain import explain_files, parse_time
    from lobstream.replay.errors import DataError

    if sum(v is not None for v in (at, row, top)) != 1:
        raise click.UsageError("give exactly one of --at TIME, --row N, --top N")
    if at is not None:
        try:
            parse_time(at, 0)  # the form only: a bare time of day takes the first row's date
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--at") from None
    try:
        records = explain_files(
            list(files), model_path, out, at=at, row=row, top=top, min_gap=min_gap,
            registry=registry_from(registry), fmt=fmt, skip_bad=skip_bad, head=head,
        )  # fmt: skip
    except (DataError, ArtifactError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for record in records:
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(
                f"{record['png']}: row {record['row']} {record['time']} {record['instrument']}: "
                f"{record['predicted']} "
                + " ".join(f"{c}={p:.3f}" for c, p in record["probs"].items())
                + f" ({record['method']})"
            )
