"""
learnstream float32 kernels (C++17)
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['ATTENTION_EDGE_FEATURES', 'ATTENTION_NO_EDGE', 'ATTENTION_UNKNOWN_RELATION', 'BANDIT_MAX_DIM', 'GraphAttention', 'INSTANT_CONSTANTS', 'ROUTER_BUCKETS', 'ROUTER_HIDDEN', 'ROUTER_MAX_TARGETS', 'ROUTER_RANK', 'ROUTE_AVX2', 'adapter_forward', 'bandit_features', 'bandit_projection', 'bandit_route', 'bandit_update_batch', 'clamp_norm', 'ewc_penalty', 'ewc_pull', 'fisher_ema', 'float32_from_numbers', 'float64_from_numbers', 'instant_feedback', 'instant_feedback_batch', 'instant_hebbian', 'instant_hebbian_batch', 'instant_layout', 'instant_norm', 'instant_replay_reads', 'json_number_list', 'loss_window_push_many', 'mulberry32_stream', 'online_fisher', 'online_forward', 'online_n_params', 'online_step', 'router_forward_batch', 'router_init', 'router_layout', 'router_route', 'router_route_learned', 'router_train', 'router_train_batch', 'weighted_pick']
class GraphAttention:
    """
    Fixed projections Wq, Wk, Wv, Wo (and the initial We) regenerated from the seed.
    """
    def __getstate__(self) -> tuple[int, int, int, int, int]:
        ...
    def __init__(self, dim: typing.SupportsInt | typing.SupportsIndex, heads: typing.SupportsInt | typing.SupportsIndex = 8, head_dim: typing.SupportsInt | typing.SupportsIndex = 0, seed: typing.SupportsInt | typing.SupportsIndex = 42) -> None:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, arg0: tuple) -> None:
        ...
    def attend(self, query: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], nodes: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], edges: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], we: typing.Annotated[numpy.typing.ArrayLike, numpy.float32]) -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.float32]]:
        """
        (vector[dim], weights[heads, n]) for query, node embeddings (n x dim), per-node edge rows
        [relation code (-2 no edge, -1 unknown), ts - now in ms, weight] and the current We.
        """
    def initial_we(self) -> numpy.typing.NDArray[numpy.float32]:
        """
        A copy of We as drawn from the seed (head_dim x 7).
        """
    def matrices(self) -> dict:
        """
        Copies of every weight matrix (tests compare them with the NumPy reference).
        """
    @property
    def dim(self) -> int:
        ...
    @property
    def head_dim(self) -> int:
        ...
    @property
    def heads(self) -> int:
        ...
    @property
    def seed(self) -> int:
        ...
def adapter_forward(arena: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], meta: numpy.ndarray, X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32]) -> numpy.typing.NDArray[numpy.float32]:
    """
    Adapter logits for one row (dim,) -> (nt,) or a batch (n, dim) -> (n, nt).
    """
def bandit_features(P: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], squares: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.float64]:
    """
    phi = [P x_hat; ((P x_hat)_i^2 - 1) / sqrt(2) for i < squares; 1] with x_hat = x rescaled to unit RMS.
    """
def bandit_projection(seed: typing.SupportsInt | typing.SupportsIndex, dim: typing.SupportsInt | typing.SupportsIndex, in_dim: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    """
    The bandit's projection P (dim x in_dim): randn of mulberry32(seed ^ 0xB4D1) / sqrt(in_dim).
    """
def bandit_route(P: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], Ainv: numpy.ndarray, theta: numpy.ndarray, cost: typing.Any, x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], alpha: typing.SupportsFloat | typing.SupportsIndex, lam: typing.SupportsFloat | typing.SupportsIndex) -> tuple[int, int, bool, float, float]:
    """
    One query -> (best, greedy, tied, mean of best, width of best): best maximises theta.phi - lam cost + alpha sqrt(phi' Ainv phi); greedy drops the alpha term; tied: every target scored the same.
    """
def bandit_update_batch(P: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], Ainv: numpy.ndarray, b: numpy.ndarray, theta: numpy.ndarray, arms: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], rewards: typing.Annotated[numpy.typing.ArrayLike, numpy.float64], gamma: typing.SupportsFloat | typing.SupportsIndex, normalize: bool = True, idle_gamma: typing.SupportsFloat | typing.SupportsIndex = 1.0, idle_cap: typing.SupportsFloat | typing.SupportsIndex = 0.0, share_weights: typing.Any = None, shares: typing.Any = None) -> numpy.typing.NDArray[numpy.float64]:
    """
    In place, rows in order: target arms[i] learns rewards[i] at X[i] (forgetting gamma); returns each row's prediction before its update (the GIL is released). normalize=False: phi = [P x; 1] with X as given, not rescaled to unit RMS. idle_gamma < 1: after each row every other target forgets by it too (Ainv / idle_gamma, b * idle_gamma) while trace(Ainv) stays <= idle_cap. shares (float64, one per row, written in place) with share_weights (one per row of P): sum_j share_weights[j] phi_j^2 over the projected features, NaN for an all-zero row.
    """
def clamp_norm(v: numpy.ndarray, max_norm: typing.SupportsFloat | typing.SupportsIndex = 5.0) -> float:
    """
    One global clamp in place: if ||v|| > max_norm, v *= max_norm/||v||; returns the norm after.
    """
def ewc_penalty(F: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], snap: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], theta: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], lam: typing.SupportsFloat | typing.SupportsIndex) -> float:
    """
    lam * sum_i F_i (theta_i - snap_i)^2 over the shortest of the three lengths.
    """
def ewc_pull(theta: numpy.ndarray, F: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], snap: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], coef: typing.SupportsFloat | typing.SupportsIndex) -> None:
    """
    EWC pull in place: theta_i -= coef * F_i * (theta_i - snap_i).
    """
def fisher_ema(F: numpy.ndarray, g: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], decay: typing.SupportsFloat | typing.SupportsIndex = 0.999) -> None:
    """
    EWC++ Fisher EMA in place: F <- decay*F + (1-decay)*g*g (float32, equal lengths).
    """
def float32_from_numbers(values: typing.Any) -> typing.Any:
    """
    A list of exact floats and ints as float32 (np.asarray(values, float32)), or None for anything else.
    """
def float64_from_numbers(values: typing.Any) -> typing.Any:
    """
    A list of exact floats and of ints within 2**53 as float64, or None for anything else.
    """
def instant_feedback(arena: numpy.ndarray, meta: numpy.ndarray, x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], target: typing.SupportsInt | typing.SupportsIndex, quality: typing.SupportsFloat | typing.SupportsIndex, now_ms: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple[bool, float]:
    """
    One validated feedback event in place (Hebbian step, replay push and pick); returns (learned, ||theta||).
    """
def instant_feedback_batch(arena: numpy.ndarray, meta: numpy.ndarray, X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], targets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], qualities: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], now_ms: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], trace: numpy.ndarray | None = None) -> tuple[int, float]:
    """
    A sequence of validated feedback events, exactly as one instant_feedback per row, GIL released; returns (events that learned, ||theta||). With ``trace`` (float64[n, 2]) it also writes (||theta||, lr) after each row.
    """
def instant_hebbian(arena: numpy.ndarray, meta: numpy.ndarray, x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], target: typing.SupportsInt | typing.SupportsIndex, scale: typing.SupportsFloat | typing.SupportsIndex) -> float:
    """
    One hebbian_update(x, target, scale) in place; returns ||theta|| after the clamp.
    """
def instant_hebbian_batch(arena: numpy.ndarray, meta: numpy.ndarray, X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], targets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], scales: typing.Annotated[numpy.typing.ArrayLike, numpy.float32]) -> float:
    """
    hebbian_update for each row in order (GIL released); returns ||theta||.
    """
def instant_layout(dim: typing.SupportsInt | typing.SupportsIndex, nt: typing.SupportsInt | typing.SupportsIndex) -> dict:
    """
    Offsets (in floats) of each field in an instant core's arena.
    """
def instant_norm(arena: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], meta: numpy.ndarray) -> float:
    """
    ||theta|| of an instant core, squares summed in double.
    """
def instant_replay_reads(arena: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], meta: numpy.ndarray, qualities: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], now_ms: typing.Annotated[numpy.typing.ArrayLike, numpy.int64]) -> numpy.typing.NDArray[numpy.int64]:
    """
    The replay slots instant_feedback_batch over these events would read before writing them, each once, in first-read order (from the ring and scales only; the rows may be absent).
    """
def json_number_list(values: typing.Any) -> bool:
    """
    True for a list of exact floats and of ints in -2**63 .. 2**64 - 1 (what orjson writes as numbers).
    """
def loss_window_push_many(ring: numpy.ndarray, counters: numpy.ndarray, losses: typing.Annotated[numpy.typing.ArrayLike, numpy.float64], min_std: typing.SupportsFloat | typing.SupportsIndex = 0.0001, z_thresh: typing.SupportsFloat | typing.SupportsIndex = 2.5, min_prior: typing.SupportsInt | typing.SupportsIndex = 3) -> numpy.typing.NDArray[numpy.float64]:
    """
    loss_window_push for each loss in order, GIL released; row i (float64[9]): fired, stored, z, prior mean, prior std, window mean, window std, window length, boundaries after loss i.
    """
def mulberry32_stream(seed: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    """
    The first n values of mulberry32(seed).
    """
def online_fisher(theta: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], y: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], hidden: typing.SupportsInt | typing.SupportsIndex, n_classes: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    """
    Empirical Fisher diagonal: mean squared per-example gradient of log p(y|x).
    """
def online_forward(theta: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], hidden: typing.SupportsInt | typing.SupportsIndex, n_classes: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    """
    Logits (B x c) of X.
    """
def online_n_params(d: typing.SupportsInt | typing.SupportsIndex, hidden: typing.SupportsInt | typing.SupportsIndex, n_classes: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    Length of theta: h>0: W1 (h x d), b1, W2 (c x h), b2; h=0: W (c x d), b.
    """
def online_step(theta: numpy.ndarray, velocity: numpy.ndarray | None, X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], y: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], hidden: typing.SupportsInt | typing.SupportsIndex, n_classes: typing.SupportsInt | typing.SupportsIndex, ce_w: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, mask: typing.Annotated[numpy.typing.ArrayLike, numpy.uint8] | None = None, mse_w: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, target: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, kd_w: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, teacher: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, tau: typing.SupportsFloat | typing.SupportsIndex = 1.0, fisher: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, anchor: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | None = None, ewc_lambda: typing.SupportsFloat | typing.SupportsIndex = 0.0, lr: typing.SupportsFloat | typing.SupportsIndex = 0.01, momentum: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> tuple[float, numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.float32]]:
    """
    Fused forward/backward/SGD step in place on theta (and velocity); returns (objective, logits, per-example cross-entropy), all before the update.
    """
def router_forward_batch(params: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], n_targets: typing.SupportsInt | typing.SupportsIndex, normalize: bool = False) -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.float32]]:
    """
    Rows of X -> (model logits n x nt, ctx logits n x 5, [temperature, top_p, conf] n x 3).
    """
def router_init(seed: typing.SupportsInt | typing.SupportsIndex, in_dim: typing.SupportsInt | typing.SupportsIndex, n_targets: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    """
    Deterministic parameter buffer: V, U (90% masked) from mulberry32(seed), heads from mulberry32(seed ^ 0xA17C), biases 0.
    """
def router_layout(in_dim: typing.SupportsInt | typing.SupportsIndex, n_targets: typing.SupportsInt | typing.SupportsIndex) -> dict:
    """
    {name: (offset, shape)} of every tensor in the parameter buffer, plus 'total' and 'trainable' (offset of the trained tail: model and context heads).
    """
def router_route(params: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], n_targets: typing.SupportsInt | typing.SupportsIndex, normalize: bool = False, adapter: typing.Any = None) -> tuple[int, float, int, float, float, float]:
    """
    One query -> (model index, its softmax prob, context bucket, temperature, top_p, confidence).
    """
def router_route_learned(params: typing.Any, x: typing.Any, n_targets: typing.SupportsInt | typing.SupportsIndex, normalize: bool, adapter: typing.Any, P: typing.Any, Ainv: numpy.ndarray, theta: numpy.ndarray, cost: typing.Any, alpha: typing.SupportsFloat | typing.SupportsIndex, lam: typing.SupportsFloat | typing.SupportsIndex) -> tuple[int, int, float, float, float, int, int, bool]:
    """
    router_route and bandit_route in one call -> (FastGRNN model index, context bucket, temperature, top_p, confidence, bandit best, bandit greedy, tied).
    """
def router_train(params: numpy.ndarray, x: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], n_targets: typing.SupportsInt | typing.SupportsIndex, target: typing.SupportsInt | typing.SupportsIndex, bucket: typing.SupportsInt | typing.SupportsIndex, lr: typing.SupportsFloat | typing.SupportsIndex, normalize: bool = False) -> None:
    """
    In place: one softmax cross-entropy step of the model and context heads toward (target, bucket); a negative lr pushes away.
    """
def router_train_batch(params: numpy.ndarray, X: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], n_targets: typing.SupportsInt | typing.SupportsIndex, targets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], buckets: typing.Annotated[numpy.typing.ArrayLike, numpy.int64], lrs: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], normalize: bool = False) -> None:
    """
    In place: router_train over the rows of X in order (the GIL is released).
    """
def weighted_pick(scales: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], seed: typing.SupportsInt | typing.SupportsIndex, exclude: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    The spec's weighted_pick(seed, exclude) over |scales|: an index, or -1 when n <= 1.
    """
ATTENTION_EDGE_FEATURES: int = 7
ATTENTION_NO_EDGE: float = -2.0
ATTENTION_UNKNOWN_RELATION: float = -1.0
BANDIT_MAX_DIM: int = 256
INSTANT_CONSTANTS: dict = {'rank': 2, 'decay': 0.9950000047683716, 'max_norm': 5.0, 'clamp_slack': 0.9999990463256836, 'replay_cap': 64, 'min_replay': 4, 'neutral_eps': 9.999999747378752e-05, 'golden': 2654435761, 'meta_size': 71, 'meta': {'dim': 0, 'nt': 1, 'feedback_count': 2, 'resets': 3, 'replay_head': 4, 'replay_len': 5, 'has_ewc': 6, 'replay_idx': 7}, 'scalars': {'lr': 0, 'lr_min': 1, 'ewc_lam': 2}}
ROUTER_BUCKETS: int = 5
ROUTER_HIDDEN: int = 128
ROUTER_MAX_TARGETS: int = 1024
ROUTER_RANK: int = 8
ROUTE_AVX2: bool
__version__: str = '0.1.0'
