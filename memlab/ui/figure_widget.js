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

const MIN_FONT_PX = 9;
const PAD_PX = 4;

function fitText(gd) {
  if (!gd || !gd.isConnected) return;
  const box = gd.getBoundingClientRect();
  if (box.width <= 0) return;
  const texts = gd.querySelectorAll(
    ".infolayer .gtitle, .infolayer .gtitle-subtitle, .infolayer .annotation-text",
  );
  for (const t of texts) {
    let r = t.getBoundingClientRect();
    const left = Math.max(box.left, r.left);
    const avail = box.right - PAD_PX - left;
    if (r.width <= avail + 0.5 || avail <= 0) continue;
    const size = parseFloat(t.style.fontSize || getComputedStyle(t).fontSize) || 12;
    const smaller = Math.max(MIN_FONT_PX, Math.floor(size * (avail / r.width) * 10) / 10);
    t.style.fontSize = `${smaller}px`;
    r = t.getBoundingClientRect();
    if (r.right <= box.right - PAD_PX + 0.5) continue;
    // Still too wide at the smallest size: shorten it; the whole text stays as a tooltip.
    const svg = "http://www.w3.org/2000/svg";
    const spans = t.querySelectorAll("tspan");
    let target = spans.length ? spans[spans.length - 1] : null;
    if (!target) {
      target = document.createElementNS(svg, "tspan");
      target.textContent = t.textContent;
      t.textContent = "";
      t.appendChild(target);
    }
    if (!t.querySelector("title")) {
      const tip = document.createElementNS(svg, "title");
      tip.textContent = Array.from(t.querySelectorAll("tspan"), (s) => s.textContent).join(" ");
      t.appendChild(tip);
    }
    let text = target.textContent;
    while (text.length > 1 && t.getBoundingClientRect().right > box.right - PAD_PX) {
      text = text.slice(0, -2);
      target.textContent = `${text}…`;
    }
  }
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
      // Titles, subtitles and annotations are SVG text: plotly never wraps them, and a title
      // that names a run's figures ("Tensor memory by category: peak 70.4 MiB in backward")
      // is wider than a cell at 1280 px with JupyterLab's sidebar open. After each draw,
      // text wider than the figure is set smaller (down to 9 px), then shortened with an
      // ellipsis and its whole text kept as a tooltip. Only the view changes, never the model.
      // The graph div appears, and plotly redraws its text, after render has returned: a
      // change anywhere under this element schedules one check on the next frame.
      let fitFrame = 0;
      const scheduleFit = () => {
        if (!fitFrame) {
          fitFrame = requestAnimationFrame(() => {
            fitFrame = 0;
            // plotly draws into the widget's own element (it becomes the graph div).
            fitText(el.classList.contains("js-plotly-plot") ? el : el.querySelector(".js-plotly-plot"));
          });
        }
      };
      const mutations = new MutationObserver(scheduleFit);
      mutations.observe(el, {
        childList: true,
        subtree: true,
        characterData: true,
        attributes: true,
        attributeFilter: ["style"],
      });
      scheduleFit();
      return () => {
        mutations.disconnect();
        cancelAnimationFrame(fitFrame);
        observer.disconnect();
        cancelAnimationFrame(frame);
        if (typeof cleanup === "function") cleanup();
      };
    },
  };
};
