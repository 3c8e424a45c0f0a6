"""The package's structure stays as docs/ARCHITECTURE.md documents it: imports go from higher layers to lower
ones only (read from the source with ``ast``, so lazy imports inside functions count too), there is no
import circle, and the public names and documented signatures (docs/api/) do not change."""

import ast
import inspect
import pathlib

import dgjax as dg

ROOT = pathlib.Path(dg.__file__).parent

# low -> high; a module may import from its own layer or a lower one (docs/ARCHITECTURE.md)
LAYERS = [
    ("core", {"_checks", "_io", "errors", "processes", "parametrizations", "dynamics", "divergence", "oracle",
              "external", "quantization", "_memory"}),
    ("solve", {"solve", "grids"}),
    ("sampling", {"sampling"}),
    # denoising measures log p_t(x_t) with dg.log_likelihood
    ("diagnostics", {"likelihood", "denoising", "alignment", "parallel", "forward", "elbo", "evaluation"}),
    ("models", {"data", "models"}),
    ("training", {"training"}),
    ("edges", {"cli", "__init__"}),
]
# inside each package, low -> high (a module imports only modules before it in its package)
PACKAGE_ORDER = {
    "sampling": ["__init__", "base", "brownian", "ode", "guidance", "sde", "mode", "sample"],
    "models": ["__init__", "configs", "networks", "trained", "checkpoints", "galaxies", "files"],
    "training": ["__init__", "config", "loss", "step", "checkpoints", "loop"],
}


def _layer(top: str) -> int:
    for i, (_, mods) in enumerate(LAYERS):
        if top in mods:
            return i
    raise AssertionError(f"module {top!r} is in no layer of docs/ARCHITECTURE.md; add it there and here")


def _imports(path: pathlib.Path):
    """The dgjax modules ``path`` imports, as dotted names relative to the package (e.g. 'sampling.ode')."""
    rel = path.relative_to(ROOT).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("dgjax"):
                    base = node.module.split(".")[1:]
                else:
                    continue
            else:
                base = pkg[: len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            if base:
                out.add(".".join(base))
            else:  # from . import dynamics
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("dgjax."))
    return out


def _modules():
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in ROOT.rglob("*.py")}


def test_imports_follow_the_layers():
    bad = []
    for name, path in _modules().items():
        top = name.split(".")[0]
        for imp in _imports(path):
            if _layer(imp.split(".")[0]) > _layer(top):
                bad.append(f"{name} imports {imp}")
    assert not bad, "imports from a higher layer (docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def test_packages_import_downward():
    mods = _modules()
    for pkg, order in PACKAGE_ORDER.items():
        assert {n.split(".")[1] for n in mods if n.startswith(pkg + ".")} == set(order), \
            f"dgjax/{pkg}/ has modules not in PACKAGE_ORDER (docs/ARCHITECTURE.md)"
        for name in order[1:]:
            for imp in _imports(mods[f"{pkg}.{name}"]):
                parts = imp.split(".")
                if parts[0] == pkg and len(parts) > 1:
                    assert order.index(parts[1]) < order.index(name), f"{pkg}.{name} imports {imp}"
                assert parts[0] != pkg or len(parts) > 1, f"{pkg}.{name} imports its own package's __init__"


def test_no_import_circle():
    mods = _modules()
    graph = {n: {i for i in _imports(p) if i in mods or i + ".__init__" in mods} for n, p in mods.items()}
    graph = {n: {i if i in mods else i + ".__init__" for i in deps} for n, deps in graph.items()}
    state = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph[n]:
            if m == n or (n.endswith("__init__") and m.startswith(n[: -len("__init__")])):
                continue  # a package's __init__ re-exports its own modules
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack + [n, m]))
            if m not in state:
                visit(m, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


PUBLIC = {
    "Alignment", "score_alignment", "DATASETS", "Dataset", "load_dataset", "DivergenceEstimator", "Exact",
    "Hutchinson", "DensityGuidance", "HighDensity", "prior_guidance", "typicality", "InfeasibleGuidance",
    "Likelihood", "bits_per_dim", "log_likelihood", "SHIPPED_MODELS", "ArchitectureMismatch", "ModelError",
    "TrainedModel", "load_model", "save_model", "GaussianMixture", "random_mixture", "batch_sharding",
    "host_local_batch", "host_slice", "log_likelihood_sharded", "pad_batch", "sample_sharded",
    "score_alignment_sharded", "shard_batch", "score_from", "score_to", "EDM", "VE", "VP", "LinearFlow", "Process",
    "VPCosine", "VPLinear", "ODE", "PFODE", "ODESampler", "Sample", "sample", "SDE", "NoiseWindow",
    "NoiseWindowLogSNR", "ReverseSDE", "SDESampler", "StochasticDensityGuidance", "noise_window",
    "noise_window_log_snr", "TrainConfig", "train",
}


def test_public_names_unchanged():
    assert set(dg.__all__) >= PUBLIC, sorted(PUBLIC - set(dg.__all__))
    assert all(hasattr(dg, n) for n in dg.__all__)
    assert issubclass(dg.InfeasibleGuidance, __import__("equinox").EquinoxRuntimeError)


# documented signatures (docs/api/): the leading parameters, in order, and the keyword options with defaults
SIGNATURES = {
    "sample": ["score", "process", "x_T", "sampler", "key", "track_logp", "divergence", "solver", "steps", "rtol",
               "atol", "logp_T", "t_start", "t_end", "adjoint", "max_steps", "grid", "options"],
    "DensityGuidance": ["q", "rate", "start_at_median", "data_scale", "feasibility_tol", "data_range"],
    "HighDensity": ["t_switch"],
    "StochasticDensityGuidance": ["q", "noise", "exact", "rate", "start_at_median", "brownian", "guidance_kwargs"],
    "prior_guidance": ["process", "x_T", "q"],
    "typicality": ["score", "process", "x", "t", "key", "divergence"],
    "noise_window": ["level", "t_from", "t_to"],
    "noise_window_log_snr": ["process", "level", "lambda_from", "lambda_to"],
    "load_model": ["name_or_path", "compute_dtype"],
    "bits_per_dim": ["logp", "shape", "offset_bits"],
}


def test_documented_signatures_unchanged():
    for name, params in SIGNATURES.items():
        got = list(inspect.signature(getattr(dg, name)).parameters)
        assert got == params, f"dg.{name}{inspect.signature(getattr(dg, name))}: expected parameters {params}"
    sig = inspect.signature(dg.sample)
    assert sig.parameters["sampler"].default is None and sig.parameters["track_logp"].default is False
    assert inspect.signature(dg.DensityGuidance).parameters["q"].default == 0.5
