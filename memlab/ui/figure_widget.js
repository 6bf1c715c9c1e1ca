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
      return plotlyWidget.render({ model, el });
    },
  };
};
