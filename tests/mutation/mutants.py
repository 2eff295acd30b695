"""The planted bugs of ``tests/mutation/run.py``: realistic single changes, one per entry.

An entry names one file, an ``old`` text that occurs in it exactly once, the ``new`` text, and
the pytest runs that must catch it (each a string of pytest arguments; the mutant is caught when
any run fails; a run stops at its first failure, so the file that catches it comes first).
When the code moves, the harness reports the entry as ``stale``: retarget it by finding the
same line (the ``why`` says what it computes) and updating ``file`` / ``old``.

Kinds: sign flips, dropped terms, off-by-ones, precision-only changes (an accurate formula
replaced by a textbook one), float32-only constants, and fast-path-only changes (a fast path
that no longer matches its reference).
"""

from collections import namedtuple

Mutant = namedtuple("Mutant", "id family file old new tests why")

_ELEMENTWISE = "refflow/bijectors/elementwise.py"
_LINEAR = "refflow/bijectors/linear.py"
_NORM = "refflow/bijectors/normalization.py"
_SCALE = "refflow/bijectors/scale_maps.py"
_PLANAR = "refflow/bijectors/planar.py"
_MAPS = "refflow/bijectors/spline_maps.py"
_BASE = "refflow/bijectors/base.py"
# Every spline kernel (generic knot kernels, fused "durkan" scalar and block kernels) is in one
# numba file; the per-bin formulas (``_rq_root`` ...) are shared by all of them.
_SPLINE_KERNELS = "refflow/kernels/splines.py"
_MATH = "refflow/_math.py"
_BNAF = "refflow/bijectors/block_neural.py"
_GAUSS = "refflow/bijectors/gaussianization.py"
_FUSED = "refflow/kernels/fused.py"

_PROPS = "tests/test_properties.py -k '{}'"

MUTANTS = [
    # ------------------------------------------------------------------ the survivors
    Mutant("io-shape-as-size", "io", "refflow/io/files.py",
           "if value.shape != np.shape(target):",
           "if value.size != np.size(target):",
           ["tests/test_io.py"],
           "loader: an array of the right size but another shape, e.g. (1, 4) for (4,), loads"),
    Mutant("spline-exp-clamp-f32", "splines", _SPLINE_KERNELS,
           "lim = dt(-150.0) if is32 else dt(-1000.0)",
           "lim = dt(-1000.0)",
           ["tests/parity/test_spline_float32.py tests/parity/test_spline_kernels_fast.py"],
           "float32 _exp_le0: clamped at -1000, 2^n leaves float32's exponent range"),
    Mutant("spline-two-b-float64", "splines", _SPLINE_KERNELS,
           "two_b = dt(bound - (-bound))",
           "two_b = bound - (-bound)",
           ["tests/parity/test_spline_float32.py tests/parity/test_spline_kernels_fast.py"],
           "a float64 constant inside the float32 kernels (more accurate, not float32)"),
    Mutant("planar-inverse-c-not-c-map", "planar", _PLANAR,
           "planar_inverse(x @ w, c_map, b, delta, a)",
           "planar_inverse(x @ w, c, b, delta, a)",
           ["tests/bijectors/test_planar.py"],
           "the inverse solves the float64 map's w.u_hat, not the float map's: float32 drifts"),
    # ------------------------------------------------------------------ the near-misses
    Mutant("softplus-inverse-small-x", "elementwise", _MATH,
           "out[~big] = np.log(-np.expm1(-x[~big]))",
           "out[~big] = np.log1p(-np.exp(-x[~big]))",
           ["tests/bijectors/test_elementwise.py"],
           "precision only: log(1 - e^-x) loses digits for x near 0 (8e-7 relative at 1e-12)"),
    Mutant("durkan-root-branch", "splines", _SPLINE_KERNELS,
           "        q = two_s * zc\n",
           "        q = two_s * z\n",
           ["tests/parity/test_spline_inverse.py tests/parity/test_spline_kernels_fast.py"],
           "the rationalised root (generic, scalar and block fused kernels all share it)"),
    Mutant("chain-context-bar-overwritten", "base", _BASE,
           "context_bar = context_bar + layer_context_bar",
           "context_bar = layer_context_bar",
           [_PROPS.format("chain_conditional"), "tests/test_base.py"],
           "Chain keeps only the first conditional layer's context cotangent"),
    # ------------------------------------------------------------------ elementwise
    Mutant("sigmoid-dlog-sign", "elementwise", _ELEMENTWISE,
           "return -np.tanh(0.5 * z)  # d/dz",
           "return np.tanh(0.5 * z)  # d/dz",
           ["tests/bijectors/test_elementwise.py"],
           "sign of (log sigmoid')' in the forward pullback"),
    Mutant("tanh-log-det-drops-log2", "elementwise", _ELEMENTWISE,
           "return 2.0 * (math.log(2.0) - a - np.log1p(np.exp(-2.0 * a)))",
           "return 2.0 * (-a - np.log1p(np.exp(-2.0 * a)))",
           ["tests/bijectors/test_elementwise.py"],
           "Tanh's log-det without its log 2 (a constant per element)"),
    Mutant("logit-alpha-log-c-dropped", "elementwise", _ELEMENTWISE,
           "return self._log_c - np.log(y) - np.log1p(-y)",
           "return -np.log(y) - np.log1p(-y)",
           ["tests/bijectors/test_elementwise.py"],
           "Logit(alpha)'s dim * log(1 - 2 alpha) term dropped from the forward log-det"),
    # ------------------------------------------------------------------ linear
    Mutant("lu-softplus-floor-dropped", "linear", _LINEAR,
           "c = softplus(u) + u.dtype.type(_SOFTPLUS_FLOOR)",
           "c = softplus(u)",
           ["tests/bijectors/test_linear.py"],
           "nflows' softplus(u) + 1e-3 diagonal without its floor (consistent, so only a "
           "paper-fact test sees it)"),
    Mutant("lu-log-det-grad-sign", "linear", _LINEAR,
           '"unconstrained_upper_diag": diag_bar * dc + log_det_term * dlog_c,',
           '"unconstrained_upper_diag": diag_bar * dc - log_det_term * dlog_c,',
           ["tests/bijectors/test_linear.py"],
           "sign of the log-det's gradient w.r.t. U's diagonal"),
    # ------------------------------------------------------------------ normalization
    Mutant("batchnorm-train-pullback-mean-dropped", "normalization", _NORM,
           "x_bar = (xhat_bar - xhat_bar.mean(axis=0) - xhat * inner) / std",
           "x_bar = (xhat_bar - xhat * inner) / std",
           ["tests/bijectors/test_normalization.py"],
           "training-mode BatchNorm pullback without the batch mean's term"),
    Mutant("actnorm-init-log-scale-sign", "normalization", _NORM,
           'init = {"shift": mean, "log_scale": np.log(spread)}',
           'init = {"shift": mean, "log_scale": -np.log(spread)}',
           ["tests/bijectors/test_normalization.py"],
           "ActNorm's data-dependent initialisation (density direction) with the wrong sign"),
    # ------------------------------------------------------------------ coupling and scale maps
    Mutant("coupling-pullback-log-det-term-dropped", "coupling", _SCALE,
           "(y_bar * vs + log_det_bar[..., None]) * dlog_scale",
           "(y_bar * vs) * dlog_scale",
           ["tests/bijectors/test_coupling.py"],
           "the multiplying affine step's pullback (coupling forward) without the log-det's "
           "cotangent"),
    Mutant("scale-softclip-derivative", "coupling", _SCALE,
           "return u / d, 1.0 / (d * d)",
           "return u / d, 1.0 / d",
           ["tests/bijectors/test_coupling.py", _PROPS.format("softclip")],
           "softclip's derivative with one factor of (1 + |u|/c) missing"),
    Mutant("scale-sigmoid-offset", "coupling", _SCALE,
           "s * sigmoid(-(u + 2.0)) / (s + _FLOOR)",
           "s * sigmoid(-u) / (s + _FLOOR)",
           ["tests/bijectors/test_coupling.py"],
           "nflows' sigmoid(u + 2) scale without its offset (only in the derivative)"),
    # ------------------------------------------------------------------ autoregressive
    Mutant("maf-pullback-log-det-sign", "autoregressive", _SCALE,
           "(y_bar * dy_dl - log_det_bar[..., None]) * dlog_scale",
           "(y_bar * dy_dl + log_det_bar[..., None]) * dlog_scale",
           ["tests/bijectors/test_autoregressive.py", _PROPS.format("maf")],
           "MAF density-direction pullback: sign of the log-det's cotangent"),
    Mutant("incremental-sampler-degree-off-by-one", "autoregressive",
           "refflow/nn/_incremental.py",
           "p1 = prev_end[k]",
           "p1 = prev_end[k - 1] if k > 0 else 0",
           ["tests/parity/test_sampling.py"],
           "fast path only: the incremental sampler skips the units of degree k"),
    Mutant("made-blocked-group-side", "autoregressive", "refflow/nn/_blocked.py",
           'side = "left" if strict else "right"',
           'side = "left"',
           ["tests/parity/test_made.py"],
           "fast path only: block products drop the inputs of the group's top degree"),
    # ------------------------------------------------------------------ splines
    Mutant("durkan-map-min-derivative-dropped", "splines", _MAPS,
           "self._inner(dk)[...] = ud.dtype.type(self.min_derivative) + softplus(ud)",
           "self._inner(dk)[...] = softplus(ud)",
           ["tests/test_spline_maps.py"],
           "reference path only: the durkan map's inner derivatives lose their minimum"),
    Mutant("zuko-map-clip-factor", "splines", _MAPS,
           "q = 1.0 + np.abs(t(2.0) * u / t(self._log_slope))",
           "q = 1.0 + np.abs(u / t(self._log_slope))",
           ["tests/bijectors/test_splines.py"],
           "zuko's soft clip of widths/heights without its factor 2 (consistent in the layer)"),
    Mutant("durkan-fast-min-bin-dropped", "splines", _SPLINE_KERNELS,
           "            m[b] += min_bin + c * pt[j, b]",
           "            m[b] += c * pt[j, b]",
           ["tests/parity/test_spline_kernels_fast.py"],
           "fast path only: fused knots without the minimum bin width"),
    Mutant("durkan-fast-bin-at-knot", "splines", _SPLINE_KERNELS,
           "kk[b] += 1 if v_in[i0 + b] >= kt[j, b] else 0",
           "kk[b] += 1 if v_in[i0 + b] > kt[j, b] else 0",
           ["tests/parity/test_spline_knots.py tests/parity/test_spline_layers.py"],
           "fast path only: a point exactly on a knot goes to the bin below"),
    Mutant("durkan-fast-sigmoid-branch", "splines", _SPLINE_KERNELS,
           "sa[b] = _div(one if u >= zero else t, one + t)",
           "sa[b] = _div(t if u >= zero else one, one + t)",
           ["tests/parity/test_spline_kernels_fast.py"],
           "fast path only: sigmoid's branches swapped (the pullback of the inner derivatives)"),
    Mutant("spline-kernel-root-unrationalised", "splines", _SPLINE_KERNELS,
           "    if e >= zero:\n        p = two_s * z ",
           "    if True:\n        p = two_s * z ",
           ["tests/parity/test_spline_inverse.py tests/parity/test_spline_kernels_fast.py"],
           "precision only: the root's e + r cancels for e < 0 (fast and reference share it)"),
    # ------------------------------------------------------------------ planar family
    Mutant("planar-log-det-tanh-term", "planar", _PLANAR,
           "hp = 4 * e / ((1 + e) * (1 + e))",
           "hp = 4 * e / (1 + e)",
           ["tests/bijectors/test_planar.py"],
           "sech^2 with one factor (1 + e^-2|a|) missing"),
    Mutant("planar-flowjax-dm-dropped-denominator", "planar", _PLANAR,
           "dm, one_minus_dm = sg / (1.0 + sp), (1.0 + sp - sg) / (1.0 + sp)",
           "dm, one_minus_dm = sg, (1.0 + sp - sg) / (1.0 + sp)",
           [_PROPS.format("planar_flowjax")],
           "FlowJAX's constraint m'(s) = sigmoid / (1 + softplus) without its denominator (the "
           "gradient of u and w only)"),
    Mutant("softclip-inverse-log-det-pullback-sign", "elementwise",
           "refflow/bijectors/softclip.py",
           "x_bar = z_bar / (r * r) + log_det_bar[:, None] * (2 * np.sign(x) / gap)",
           "x_bar = z_bar / (r * r) - log_det_bar[:, None] * (2 * np.sign(x) / gap)",
           [_PROPS.format("softclip")],
           "zuko's soft clip: the inverse log-det's derivative with its sign flipped"),
    Mutant("leaky-tanh-line-log-det", "elementwise", "refflow/bijectors/leaky_tanh.py",
           "log_d = np.where(line, np.log(g), log_tanh)",
           "log_d = np.where(line, 0, log_tanh)",
           ["tests/bijectors/test_leaky_tanh.py"],
           "FlowJAX's LeakyTanh: the linear tails' log-det log g dropped"),
    Mutant("radial-log-det-n", "planar", _PLANAR,
           "n = r * (2 * alpha + r) + alpha * s",
           "n = r * (alpha + r) + alpha * s",
           ["tests/bijectors/test_planar.py"],
           "Radial's N = r (2 alpha + r) + alpha S with a dropped alpha"),
    # ------------------------------------------------------------------ block neural (BNAF)
    Mutant("bnaf-sigmoid-log-derivative", "block_neural", _BNAF,
           "log_d = -np.abs(a) - 2 * np.log1p(e)",
           "log_d = -np.abs(a) - np.log1p(e)",
           ["tests/bijectors/test_block_neural.py", _PROPS.format("bnaf_sigmoid")],
           "log sigmoid'(a) with one log(1 + e^-|a|) dropped: the log-det only, z unchanged"),
    Mutant("bnaf-gate-gradient-sign", "block_neural", _BNAF,
           "+ (z_bar * (f - x)).sum() * (r1 * r2)",
           "+ (z_bar * (f + x)).sum() * (r1 * r2)",
           ["tests/bijectors/test_block_neural.py", _PROPS.format("gated")],
           "the gated residual's gate gradient: dz/dgate = r1 r2 (f - x) with a sign flipped"),
    Mutant("bnaf-kernel-leak-dropped", "block_neural", "refflow/kernels/bnaf.py",
           "return t + slope * a, d + slope",
           "return t, d + slope",
           ["tests/bijectors/test_block_neural.py", _PROPS.format("bnaf")],
           "the inverse's kernel evaluates leaky_tanh without its leak: it solves another map"),
    # ------------------------------------------------------------------ gaussianization
    Mutant("gauss-logistic-dlogpdf", "gaussianization", _GAUSS,
           "lpdf, dlpdf = small + big, -np.tanh(u / 2)",
           "lpdf, dlpdf = small + big, -np.tanh(u)",
           ["tests/bijectors/test_gaussianization.py", _PROPS.format("gauss_logistic")],
           "(log f)' of the logistic kernel without its 1/2: the log-det's gradient only"),
    Mutant("gauss-ndtri-exp-newton-dropped", "gaussianization", _GAUSS,
           "return z - (log_cdf - y) * np.exp(log_cdf - log_pdf)",
           "return z + 0 * (log_cdf - y - log_pdf)",
           ["tests/bijectors/test_gaussianization.py"],
           "precision only: scipy's ndtri_exp without the Newton step (3e3 ulps in the far tail)"),
    Mutant("gauss-kernel-upper-tail-sign", "gaussianization", "refflow/kernels/gaussianization.py",
           "    return target - log_v, slope",
           "    return log_v - target, slope",
           ["tests/bijectors/test_gaussianization.py", _PROPS.format("gaussianization")],
           "the inverse's residual on the upper tail with its sign flipped"),
    # ------------------------------------------------------------------ optimizers, kernels
    Mutant("adam-bias-correction-off-by-one", "training", "refflow/training/optim.py",
           "self.lr / (1.0 - b1 ** t),\n",
           "self.lr / (1.0 - b1 ** (t + 1)),\n",
           ["tests/test_optim.py", "tests/parity/test_mlp_optim_coupling.py"],
           "fast path only: Adam's first-moment bias correction one step ahead"),
    Mutant("fused-relu-derivative-at-zero", "nn", _FUSED,
           "d[i] = one if s > zero else zero",
           "d[i] = one if s >= zero else zero",
           ["tests/parity/test_mlp_optim_coupling.py"],
           "fast path only: ReLU's derivative 1 at a = 0 (the reference takes 0)"),
    Mutant("diag-normal-log-prob-constant", "distributions", "refflow/distributions.py",
           "return -0.5 * np.einsum(\"ij,ij->i\", z, z) - self.dim * _HALF_LOG_2PI",
           "return -0.5 * np.einsum(\"ij,ij->i\", z, z) - _HALF_LOG_2PI",
           ["tests/test_distributions.py"],
           "StandardNormal's log-density with log(2 pi)/2 once instead of dim times"),
]
