// memlab's front end for plotly's FigureWidget: plotly's own widget, compiled once per page.
//
// Why: plotly ships its widget as one ES module of about 4.6 MB (plotly.js is inside), and
// anywidget imports a model's `_esm` as a new module for every model. anywidget also gives
// each model 2 s to import it and run `initialize` (anywidget/src/runtime.ts,
// `AbortSignal.timeout(2000)`); after that the model's `ready` promise is rejected and every
// later message to it is dropped without a word (widget.ts, `_handle_comm_msg` awaits
// `ready`). Measured in headless Chromium on 2 cores: the imports queue up at about 0.8 s each,
// so the third to fifth figure of a panel showed its first state and never updated again.
//
// Here this module is small; plotly's bundle comes as the model's `_plotly_bundle` string and
// is compiled once per page (the import is cached on `globalThis`, keyed by plotly's version
// and the bundle's hash), and `initialize` returns at once: plotly's own `initialize` and
// `render` run as soon as the bundle is there. memlab.ui.charts fills in the key below.

const KEY = __MEMLAB_PLOTLY_KEY__;

function plotlyWidgetModule(source) {
  const cache = (globalThis.__memlabPlotlyWidget ??= {});
  if (!cache[KEY]) {
    const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    cache[KEY] = import(/* webpackIgnore: true */ url).finally(() => URL.revokeObjectURL(url));
  }
  return cache[KEY];
}

// A factory: anywidget calls it once per model, so `widget` belongs to one model even where a
// front end shares one module between models.
export default () => {
  let widget; // Promise of this model's plotly widget ({initialize, render}), once initialized
  return {
    initialize({ model }) {
      widget = plotlyWidgetModule(model.get("_plotly_bundle")).then((mod) => {
        const plotlyWidget = mod.default();
        plotlyWidget.initialize({ model });
        return plotlyWidget;
      });
      // Not awaited: see the top of this file.
    },
    async render({ model, el }) {
      const plotlyWidget = await widget;
      // As wide as its cell, never wider: plotly sizes an autosized figure from its
      // container, and one drawn before the cell had a width came out 700 px wide and
      // overflowed a 527 px cell (legends and the right axis cut off).
      el.style.width = "100%";
      el.style.minWidth = "0";
      const cleanup = await plotlyWidget.render({ model, el });
      // plotly's `responsive` option resizes a figure on window resize events only; a cell
      // also changes width when the sidebar opens or the figure is first attached. So: on a
      // change of this element's width, one window resize event (next frame), which the
      // figures' responsive handlers answer by refitting.
      let width = el.getBoundingClientRect().width;
      let frame = 0;
      const observer = new ResizeObserver((entries) => {
        const w = entries[entries.length - 1].contentRect.width;
        if (w > 0 && Math.abs(w - width) >= 1) {
          width = w;
          cancelAnimationFrame(frame);
          frame = requestAnimationFrame(() => window.dispatchEvent(new Event("resize")));
        }
      });
      observer.observe(el);
      return () => {
        observer.disconnect();
        cancelAnimationFrame(frame);
        if (typeof cleanup === "function") cleanup();
      };
    },
  };
};
