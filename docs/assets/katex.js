// Render the \( ... \) and \[ ... \] spans that pymdownx.arithmatex (generic mode) emits, with the
// vendored KaTeX; material's instant navigation re-runs it through document$ when present.
(function () {
  function render() {
    document.querySelectorAll(".arithmatex").forEach(function (el) {
      renderMathInElement(el, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        throwOnError: false,
      });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(render);
  } else {
    document.addEventListener("DOMContentLoaded", render);
  }
})();
