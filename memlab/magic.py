"""The ``%%memlab`` cell magic: the tensor memory of any notebook cell, measured exactly.

    %load_ext memlab

    %%memlab --budget 64MiB
    x = torch.randn(1024, 1024)
    y = x @ x

Options (``%%memlab?`` shows them too):

- no option: the cell runs in the kernel, in the notebook's own namespace, under
  ``memlab.track()`` (``model=None``: everything the cell allocates is tracked). **This imports
  torch in the kernel**, unlike the rest of memlab's notebook API (which keeps torch in worker
  processes, ARCHITECTURE.md "Process model"): acceptable here because the cell itself uses
  torch, so the kernel has imported it anyway.
- ``--isolated``: the cell's source runs in memlab's service worker (``memlab.runner.call``),
  in a fresh namespace of its own: it **cannot see or change the notebook's variables** (import
  what it needs inside the cell), and magics or shell escapes in it do not work there. Torch
  stays out of the kernel; an exception in the cell comes back with the worker's traceback
  text (:class:`IsolatedCellError`).
- ``--budget SIZE`` (``64MiB``, ``1GB``, a number of bytes): a simulated device limit; an
  allocation past it stops the cell, and the result shows status ``oom`` (no traceback, the
  kernel carries on).
- ``--compare RUN``: also show ``memlab.compare(RUN, this run)`` (a stored run's id or a
  unique prefix of it), its table and the two timelines overlaid.
- ``--label L``: the label the run is stored under; ``--no-store``: do not store it;
  ``--no-plot``: the summary table only, no figure.

What is shown: a line with the run id (``memlab.load(id)`` brings the result back), the status
and the peak; the result's summary table; its timeline (a static plotly figure, rendered by
plotly's JupyterLab extension). The run is saved with ``memlab.save(result, source="magic")``
in the run store (``$MEMLAB_STORE``; with the store off it is not saved, and the line says
so). Errors of the cell itself are raised after the result is shown, as without the magic.
"""

from __future__ import annotations

import ast
import html
import linecache
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from memlab.timeline import RunResult, format_bytes

if TYPE_CHECKING:
    from memlab.comparing import Comparison

__all__ = [
    "IsolatedCellError",
    "MagicOptions",
    "MemlabMagics",
    "load_ipython_extension",
    "parse_options",
    "run_isolated",
]

# The file name a cell run in the worker has in its traceback (its lines are put in linecache).
_ISOLATED_FILE = "<memlab cell>"


class IsolatedCellError(RuntimeError):
    """The cell run with ``--isolated`` raised; the message is the worker's traceback text."""


@dataclass(frozen=True)
class MagicOptions:
    """The parsed ``%%memlab`` line."""

    isolated: bool = False
    budget_bytes: int | None = None
    compare: str | None = None
    label: str | None = None
    store: bool = True
    plot: bool = True


def parse_options(line: str) -> MagicOptions:
    """Parse the magic's line; a bad option raises IPython's ``UsageError`` (one line, naming
    the option and what it allows), which IPython shows without a traceback."""
    from memlab.config import ConfigError, parse_bytes

    args = parse_argstring(MemlabMagics.memlab, line)  # argparse's errors are UsageErrors
    budget = None
    if args.budget is not None:
        try:
            budget = parse_bytes(args.budget, name="--budget")
        except ConfigError as e:
            raise UsageError(str(e)) from None
    if args.compare is not None and not args.compare.strip():
        raise UsageError("--compare must be a stored run's id (or a unique prefix of it)")
    return MagicOptions(
        isolated=bool(args.isolated),
        budget_bytes=budget,
        compare=args.compare,
        label=args.label,
        store=not args.no_store,
        plot=not args.no_plot,
    )


# -- running the cell -------------------------------------------------------------------------
def _split_last_expr(tree: ast.Module) -> tuple[ast.Module, ast.Expression | None]:
    """The cell without its last line when that is an expression, and that expression: its
    value is the cell's value (shown as ``Out``), as IPython does for a plain cell."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        return ast.Module(body=tree.body[:-1], type_ignores=[]), last
    return tree, None


def _track_in_kernel(
    shell: Any, cell: str, budget_bytes: int | None
) -> tuple[RunResult, Any, BaseException | None]:
    """Run ``cell`` in the user's namespace under ``memlab.track``; (result, the cell's value,
    the exception it raised or ``None``). Compiled as IPython compiles a cell (its input
    transformers, AST transformers, and its source kept for tracebacks)."""
    from memlab.tracking import track

    source = shell.transform_cell(cell)
    tree = shell.transform_ast(shell.compile.ast_parse(source))  # SyntaxError: before tracking
    body, last = _split_last_expr(tree)
    filename = shell.compile.cache(source)
    code = shell.compile(body, filename, "exec")
    last_code = None if last is None else shell.compile(last, filename, "eval")
    ns = shell.user_ns
    value = None
    rec = track(budget_bytes=budget_bytes)
    try:
        with rec:
            exec(code, ns)  # noqa: S102 - running the user's own cell is the point
            if last_code is not None:
                value = eval(last_code, ns)  # noqa: S307
    except BaseException as e:  # noqa: BLE001 - shown with the result, then raised again
        if rec.result is None:  # the tracker itself failed before the block ran
            raise
        return rec.result, None, e
    assert rec.result is not None
    return rec.result, value, None


def run_isolated(source: str, budget_bytes: int | None = None) -> tuple[RunResult, str | None]:
    """Run ``source`` (a cell, already transformed to Python) under ``memlab.track`` in a fresh
    namespace; (result, traceback text or ``None``). Called in the service worker by the magic's
    ``--isolated``; importable so the worker finds it by name."""
    from memlab.tracking import track

    lines = source.splitlines(keepends=True)
    linecache.cache[_ISOLATED_FILE] = (len(source), None, lines, _ISOLATED_FILE)
    ns: dict[str, Any] = {"__name__": "__memlab_cell__"}
    tb: str | None = None
    rec = track(budget_bytes=budget_bytes)
    try:
        code = compile(source, _ISOLATED_FILE, "exec")
        with rec:
            exec(code, ns)  # noqa: S102 - the user's cell, in the worker
    except Exception:  # noqa: BLE001 - every failure of the cell goes back as text
        tb = traceback.format_exc()
        if rec.result is None:  # did not compile, or the tracker failed before the block
            raise
    finally:
        ns.clear()  # the cell's tensors die with the job, not with the next one
    assert rec.result is not None
    return rec.result, tb


# -- showing it -------------------------------------------------------------------------------
def _plotly_bundle(fig: Any, what: str) -> dict[str, Any]:
    """A static plotly figure as a display bundle: plotly's own mimetype renderer (drawn by its
    JupyterLab extension, no widget, no internet), and a text line elsewhere. Built here rather
    than with ``fig.show()``: outside a notebook plotly's default renderer may open a web
    browser."""
    import plotly.io as pio

    bundle: dict[str, Any] = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    bundle["text/plain"] = f"<memlab {what} figure: shown by plotly's JupyterLab renderer>"
    return bundle


def _header(result: RunResult, run_id: str | None, where: str, stored: str) -> tuple[str, str]:
    """(HTML, text) of the magic's first line: the run id, the status and the peak."""
    peak = f"peak {format_bytes(result.peak_bytes)} ({result.peak_bytes:,} bytes)"
    rid = run_id if run_id is not None else "not stored"
    text = f"memlab run {rid}: {result.status}, {peak}, {where}; {stored}"
    status = html.escape(result.status.upper() if result.status != "ok" else result.status)
    color = "#1a7f37" if result.status == "ok" else "#cf222e"
    rid_html = f"<code>{html.escape(run_id)}</code>" if run_id is not None else "not stored"
    markup = (
        f"<div class='memlab-magic'><b>memlab</b> run {rid_html}: "
        f"<b style='color:{color}'>{status}</b>, {html.escape(peak)}, {html.escape(where)}; "
        f"{html.escape(stored)}"
    )
    if result.error:
        markup += f"<br><span style='color:{color}'>{html.escape(result.error)}</span>"
    return markup + "</div>", text


def render(
    result: RunResult,
    *,
    run_id: str | None,
    where: str,
    stored: str,
    comparison: Comparison | None = None,
    plot: bool = True,
) -> list[dict[str, Any]]:
    """The display bundles the magic shows, in order: the header line, the result's summary,
    its timeline, and with a comparison its table and overlaid timelines. Pure: data in,
    bundles out (the figures import plotly)."""
    markup, text = _header(result, run_id, where, stored)
    out: list[dict[str, Any]] = [
        {"text/html": markup, "text/plain": text},
        {"text/html": result._repr_html_(), "text/plain": repr(result)},
    ]
    if plot:
        from memlab.plots import timeline_figure

        out.append(_plotly_bundle(timeline_figure(result), "timeline"))
    if comparison is not None:
        out.append({"text/html": comparison._repr_html_(), "text/plain": repr(comparison)})
        if plot:
            out.append(_plotly_bundle(comparison.figure(), "comparison"))
    return out


# -- the magic --------------------------------------------------------------------------------
@magics_class
class MemlabMagics(Magics):
    """The ``%%memlab`` cell magic (registered by :func:`load_ipython_extension`)."""

    @magic_arguments()
    @argument(
        "--isolated",
        action="store_true",
        help="run the cell in memlab's worker process, in a namespace of its own: it cannot "
        "see or change the notebook's variables (import what it needs inside the cell); "
        "torch stays out of the kernel",
    )
    @argument(
        "--budget",
        metavar="SIZE",
        help="a simulated device limit, e.g. 64MiB, 1GB or a number of bytes: an "
        "allocation past it stops the cell with status oom",
    )
    @argument(
        "--compare",
        metavar="RUN",
        help="also compare with this stored run (an id or a unique prefix of it)",
    )
    @argument("--label", metavar="L", help="the label the run is stored under")
    @argument("--no-store", action="store_true", help="do not save the run in the store")
    @argument("--no-plot", action="store_true", help="the summary only, no timeline figure")
    @cell_magic
    def memlab(self, line: str, cell: str) -> Any:
        """Measure the tensor memory of this cell exactly (memlab.track), show its summary
        and timeline, and store it in memlab's run store (source "magic").

        Without --isolated the cell runs in the notebook's namespace under memlab.track
        (torch is imported in the kernel, as the cell itself does).
        """
        return _run_magic(self.shell, line, cell)


def _resolve_compare(run: str) -> str:
    from memlab.store import StoreError, default_store

    try:
        return default_store().resolve(run)
    except (KeyError, ValueError, StoreError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise UsageError(f"--compare {run}: {msg}") from None


def _run_magic(shell: Any, line: str, cell: str) -> Any:
    from IPython.display import display

    opts = parse_options(line)
    # A wrong run id is an error of the line: said before the cell runs, not after.
    compare_id = None if opts.compare is None else _resolve_compare(opts.compare)
    value: Any = None
    exc: BaseException | None = None
    if opts.isolated:
        from memlab.runner.service import call

        source = shell.transform_cell(cell)
        compile(source, _ISOLATED_FILE, "exec")  # a SyntaxError is raised here, as usual
        result, tb = call(run_isolated, source, opts.budget_bytes)
        if tb is not None and result.status != "oom":
            exc = IsolatedCellError("the cell raised in the worker:\n" + tb.rstrip())
        where = "isolated in the worker"
    else:
        result, value, exc = _track_in_kernel(shell, cell, opts.budget_bytes)
        where = "in the kernel"
        if exc is not None and result.status == "oom":
            exc = None  # the budget did its job: the status says so, no traceback
    run_id, stored = _store(result, opts)
    comparison = None
    if compare_id is not None:
        from memlab.comparing import compare

        # By id when stored, so the comparison names both runs by their ids.
        comparison = compare(compare_id, run_id if run_id is not None else result)
    for bundle in render(
        result,
        run_id=run_id,
        where=where,
        stored=stored,
        comparison=comparison,
        plot=opts.plot,
    ):
        display(bundle, raw=True)
    if exc is not None:
        raise exc
    return value


def _store(result: RunResult, opts: MagicOptions) -> tuple[str | None, str]:
    """(run id or None, what happened), saving ``result`` unless told not to or the store is
    off."""
    if not opts.store:
        return None, "not stored (--no-store)"
    from memlab.store import save, store_enabled

    if not store_enabled():
        return None, "not stored (the run store is off: MEMLAB_STORE)"
    run_id = save(result, source="magic", label=opts.label)
    return run_id, f"stored: memlab.load({run_id!r})"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext memlab`` (through ``memlab.load_ipython_extension``): register ``%%memlab``."""
    ipython.register_magics(MemlabMagics)
