"""Q-networks: a ReLU ANN and spiking networks built from snnTorch leaky integrate-and-fire neurons.

`build_q_network(cfg, obs_shape, n_actions)` maps a batch of observations `[B, *obs_shape]` to
Q-values `[B, n_actions]`. Image observations are channel-first `[C, H, W]` (uint8 or float);
vector observations `[N]` go straight to the fully connected layers.

Spiking forward pass (the fast path): direct input, the observation is the input current at every
one of the T steps. Layer by layer over time: every stateless layer (conv/linear) runs once on a
`[T*B, ...]` batch, the first spiking layer's current is computed once (the input is static), and
only the neuron update loops over T. The arithmetic of the update is snnTorch's `Leaky` (reset by
subtraction), so the result equals the step-by-step snnTorch loop (see tests/snn_reference.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import snntorch as snn
import torch
from snntorch import surrogate
from torch import nn
from torch.nn import functional as F

from config import ConfigError

THRESHOLD = 1.0  # firing threshold of every spiking neuron (snnTorch's default)

SURROGATES = {  # snnTorch surrogate factories, with their default parameters
    "atan": surrogate.atan,
    "fast_sigmoid": surrogate.fast_sigmoid,
    "sigmoid": surrogate.sigmoid,
    "triangular": surrogate.triangular,
}


def _atan_grad(u, g, alpha=2.0):
    return alpha / 2 / (1 + (math.pi / 2 * alpha * u).pow_(2)) * g


def _fast_sigmoid_grad(u, g, slope=25):
    return g / (slope * torch.abs(u) + 1.0) ** 2


def _sigmoid_grad(u, g, slope=25):
    e = torch.exp(-slope * u)
    return g * slope * e / ((e + 1) ** 2)


def _triangular_grad(u, g, threshold=1):
    return torch.where(u >= 0, -(g * threshold), g * threshold)


# The backward of each surrogate above, written as snnTorch writes it (same defaults).
SURROGATE_GRADS = {"atan": _atan_grad, "fast_sigmoid": _fast_sigmoid_grad, "sigmoid": _sigmoid_grad,
                   "triangular": _triangular_grad}


class _LeakyOverTime(torch.autograd.Function):
    """A layer of snnTorch Leaky neurons (reset by subtraction, threshold 1) run over T steps.

    Forward: the recurrence without autograd, with snnTorch's arithmetic, so the spikes are the
    ones the step-by-step loop produces. snnTorch detaches the reset signal, and the reset at step
    t equals the spike of step t-1, so the membrane's gradient is the linear reverse recurrence
    g[t] = dL/dspk[t] * surrogate'(mem[t] - 1) + beta * g[t+1]: the surrogate derivative is computed
    once over [T, B, ...] and only two ops per step loop in the backward.
    """

    @staticmethod
    def forward(ctx, currents, beta, steps, static, surrogate_name):
        shape = currents.shape if static else currents.shape[1:]
        mems = currents.new_empty((steps, *shape))
        spikes = currents.new_empty((steps, *shape))
        for t in range(steps):
            cur = currents if static else currents[t]
            if t == 0:
                mems[0].copy_(cur)  # beta * 0 + cur - 0 * threshold
            else:
                # snnTorch: beta * mem + cur - reset * threshold, reset = spike of step t-1, threshold 1
                torch.mul(beta, mems[t - 1], out=mems[t]).add_(cur).sub_(spikes[t - 1])
            # mem > 1 is exactly snnTorch's (mem - 1) > 0 in floating point (Sterbenz: mem - 1 is exact near 1)
            torch.gt(mems[t], THRESHOLD, out=spikes[t])  # 1.0 / 0.0 written in place
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(mems, beta)
        ctx.static = static
        ctx.surrogate_name = surrogate_name
        return spikes  # [T, B, ...]

    @staticmethod
    def backward(ctx, grad_spikes):
        mems, beta = ctx.saved_tensors
        grad = SURROGATE_GRADS[ctx.surrogate_name](mems - THRESHOLD, grad_spikes)  # dL/dmem from the spikes
        for t in range(grad.shape[0] - 2, -1, -1):
            torch.addcmul(grad[t], grad[t + 1], beta, out=grad[t])  # + beta * dL/dmem[t+1]
        # the membrane's gradient is the current's (each step's current enters its membrane with weight 1)
        return (grad.sum(0) if ctx.static else grad), None, None, None, None


# Convolutional encoders, (out_channels, kernel, stride) per convolution, by the `encoder` config key:
# `nature` is the Nature DQN's (Mnih et al. 2015), `nips` the first DQN's (Mnih et al. 2013): 16 and 32
# channels, no third convolution (about a third of the Nature encoder's arithmetic at 84x84).
ENCODERS = {
    "nature": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
    "nips": ((16, 8, 4), (32, 4, 2)),
}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 itself (AVX512-BF16 or AMX). Elsewhere bfloat16 convolutions
    are emulated and can be slower than float32."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(probe is not None and probe() for probe in probes)
    except RuntimeError:  # a torch built without the CPU capability checks
        return False


def encoder_precision(cfg, obs_shape: Sequence[int]) -> str:
    """What `conv_precision` means for this network on this machine: "bfloat16" or "float32". `auto`
    takes bfloat16 only where it is faster: a convolutional encoder (image input; ANN or hybrid SNN)
    on a CPU with native bfloat16 (on CUDA it was measured no faster)."""
    if cfg.conv_precision != "auto":
        return cfg.conv_precision
    has_encoder = len(obs_shape) == 3 and not (cfg.architecture == "snn" and cfg.snn_mode == "full")
    on_cpu = resolve_device(cfg.device).type == "cpu"
    return "bfloat16" if has_encoder and on_cpu and native_bfloat16() else "float32"


def conv_output_shape(obs_shape: Sequence[int], encoder: str = "nature") -> tuple[int, int, int]:
    """Shape `[C, H, W]` after the encoder; ConfigError when the image is too small."""
    spec = ENCODERS[encoder]
    _, h, w = obs_shape
    for _, kernel, stride in spec:
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        if h < 1 or w < 1:
            need = 0
            for _, k, st in reversed(spec):  # the smallest input that leaves one pixel
                need = (max(need, 1) - 1) * st + k
            raise ConfigError(f"observation {obs_shape[1]}x{obs_shape[2]} is too small for the {encoder!r} "
                              f"convolutional encoder (it needs at least {need}x{need} pixels); raise obs_size "
                              "or reduce obs_crop")
    return spec[-1][0], h, w


def _convs(in_channels: int, encoder: str = "nature") -> list[nn.Conv2d]:
    layers, c = [], in_channels
    for out, kernel, stride in ENCODERS[encoder]:
        layers.append(nn.Conv2d(c, out, kernel, stride))
        c = out
    return layers


def _to_float(obs: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frames as floats in [0, 1]; uint8 frames are scaled here so the replay can keep them as bytes.
    `dtype` bfloat16 (for the bfloat16 encoder) converts the bytes straight to bfloat16: the very values
    autocast would make of the float32 ones (bfloat16 holds 0..255 exactly, and its division computes x/255
    in float32 and rounds that to bfloat16, as autocast's cast of the float32 quotient does; tests check all
    256), without a float32 copy of the batch."""
    if obs.dtype == torch.uint8:
        if dtype == torch.bfloat16 and obs.dim() == 4:  # the bfloat16 encoder's layout, see _channels_last
            # converted in the replay's layout, then moved: a cast fused with the layout change runs
            # element by element (several times slower; docs/benchmarks.md)
            out = torch.empty_like(obs, dtype=dtype, memory_format=torch.channels_last)
            return out.copy_(obs.to(dtype).div_(255.0))
        return obs.to(dtype).div_(255.0)
    return obs if obs.dtype == dtype else obs.float()  # already converted (network_input) or float frames


def _channels_last(encoder: nn.Module) -> None:
    """The bfloat16 encoder keeps its convolutions' weights, and its frames (`_to_float`), channels-last:
    oneDNN runs bfloat16 convolutions channels-last on AMX, so the default layout made it reorder every
    input, activation and gradient there and back (docs/benchmarks.md). There the same kernels
    on the same numbers: Q and gradients equal bit for bit (tests/test_models.py); on AVX512-BF16 without
    AMX oneDNN has other kernels for each layout, equal to bfloat16's rounding. Only for bfloat16: float32
    convolutions pick other kernels channels-last, equal up to rounding only."""
    encoder.to(memory_format=torch.channels_last)


def network_input(net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """`obs` converted as `net`'s forward would convert it: convert a batch once when it goes through
    several networks of the same kind (the update's s' through the online and the target network)."""
    return _to_float(obs, net.input_dtype)


def _dueling(out: torch.Tensor, dueling: bool) -> torch.Tensor:
    """Q from a dueling head's [V, A_1..A_n] (Wang et al. 2016: Q = V + A - mean A); else `out` itself."""
    if not dueling:
        return out
    value, adv = out[:, :1], out[:, 1:]
    return value + adv - adv.mean(1, keepdim=True)


def _encode(layers, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Run the conv encoder `layers` on x, under bfloat16 autocast when asked; float32 out either way."""
    if not bf16:
        return layers(x)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
        return layers(x).float()


class ANNQNetwork(nn.Module):
    """Conv encoder (image input) + ReLU MLP."""

    def __init__(self, obs_shape: Sequence[int], n_actions: int, hidden_layers: Sequence[int],
                 conv_bf16: bool = False, dueling: bool = False, encoder: str = "nature"):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.conv_bf16 = conv_bf16
        self.dueling = dueling
        layers: list[nn.Module] = []
        self.encoder_len = 0
        if len(obs_shape) == 3:
            c, h, w = conv_output_shape(obs_shape, encoder)
            for conv in _convs(obs_shape[0], encoder):
                layers += [conv, nn.ReLU()]
            layers.append(nn.Flatten())
            self.encoder_len = len(layers)  # convs, ReLUs, Flatten
            width = c * h * w
        else:
            width = int(obs_shape[0])
        for hidden in hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, n_actions + int(dueling)))
        self.net = nn.Sequential(*layers)
        # views of the same layers for the bfloat16 encoder, sliced once (a tuple: not registered again)
        self._split = (self.net[:self.encoder_len], self.net[self.encoder_len:])
        if conv_bf16 and self.encoder_len:
            _channels_last(self._split[0])

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.conv_bf16 and self.encoder_len else torch.float32

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not (self.conv_bf16 and self.encoder_len):
            return _dueling(self.net(_to_float(obs)), self.dueling)
        encoder, head = self._split
        return _dueling(head(_encode(encoder, _to_float(obs, torch.bfloat16), True)), self.dueling)


class SpikingQNetwork(nn.Module):
    """Spiking Q-network: `hybrid` (ANN conv encoder + spiking FC) or `full` (every layer spiking).

    `stages` is a list of (stateless layer, snn.Leaky) pairs run in order; the last pair is the
    output layer, a non-resetting leaky integrator whose membrane potential is read out as Q.
    """

    def __init__(self, obs_shape: Sequence[int], n_actions: int, hidden_layers: Sequence[int], time_steps: int,
                 beta: float, mode: str = "hybrid", readout: str = "mean", surrogate_name: str = "atan",
                 conv_bf16: bool = False, dueling: bool = False, encoder: str = "nature"):
        super().__init__()
        self.conv_bf16 = conv_bf16  # hybrid: the ANN encoder under bfloat16 autocast
        self.dueling = dueling  # the output membrane reads out [V, A_1..A_n]
        if readout not in ("mean", "last", "max"):
            raise ConfigError(f"snn_readout must be mean, last or max, got {readout!r}")
        self.obs_shape = tuple(obs_shape)
        self.time_steps = int(time_steps)
        self.readout = readout
        self.mode = mode
        spike_grad = SURROGATES[surrogate_name]()
        self.surrogate_name = surrogate_name

        def lif(**kw) -> snn.Leaky:
            return snn.Leaky(beta=beta, threshold=THRESHOLD, spike_grad=spike_grad, **kw)

        self.encoder: nn.Module | None = None
        layers: list[nn.Module] = []
        lifs: list[nn.Module] = []
        if len(obs_shape) == 3:
            c, h, w = conv_output_shape(obs_shape, encoder)
            width = c * h * w
            convs = _convs(obs_shape[0], encoder)
            if mode == "full":
                layers += convs
                lifs += [lif() for _ in convs]
            else:
                self.encoder = nn.Sequential(*[m for conv in convs for m in (conv, nn.ReLU())], nn.Flatten())
                if conv_bf16:
                    _channels_last(self.encoder)
        else:
            width = int(obs_shape[0])
        for i, hidden in enumerate(hidden_layers):
            linear = nn.Linear(width, hidden)
            # in full mode the first linear layer reads the flattened spikes of the last convolution
            layers.append(nn.Sequential(nn.Flatten(), linear) if (i == 0 and mode == "full" and layers) else linear)
            lifs.append(lif())
            width = hidden
        layers.append(nn.Linear(width, n_actions + int(dueling)))
        lifs.append(lif(reset_mechanism="none"))
        self.layers = nn.ModuleList(layers)
        self.lifs = nn.ModuleList(lifs)
        self.record_firing = False  # opt-in spike statistics (see firing_rates)
        self.firing_rates: dict[str, torch.Tensor] = {}

    def layer_names(self) -> list[str]:
        return [f"spike{i}" for i in range(len(self.layers) - 1)]

    def _spiking_loop(self, lif: snn.Leaky, currents: torch.Tensor, steps: int, static: bool) -> torch.Tensor:
        """Spikes `[T, B, ...]` of one layer, state starting at zero; `currents` is `[B, ...]` reused
        at every step (static) or `[T, B, ...]`."""
        return _LeakyOverTime.apply(currents, lif.beta.clamp(0, 1), steps, static, self.surrogate_name)

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.conv_bf16 and self.encoder is not None else torch.float32

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = _to_float(obs, self.input_dtype)
        if self.encoder is not None:
            x = _encode(self.encoder, x, self.conv_bf16)  # [B, F]: static, so computed once
        steps = self.time_steps
        batch = x.shape[0]
        record = self.record_firing
        rates = {}
        spk = None
        for i, (layer, lif) in enumerate(zip(self.layers[:-1], self.lifs[:-1])):
            if spk is None:
                spk = self._spiking_loop(lif, layer(x), steps, static=True)  # the current is computed once
            else:
                cur = layer(spk.flatten(0, 1)).unflatten(0, (steps, batch))  # one batched call over [T*B, ...]
                spk = self._spiking_loop(lif, cur, steps, static=False)  # [T, B, ...]
            if record:
                rates[f"spike{i}"] = spk.detach().mean()
        out_layer, out_lif = self.layers[-1], self.lifs[-1]
        beta = out_lif.beta.clamp(0, 1)
        if record:
            self.firing_rates = rates
        if self.readout != "max":
            return _dueling(self._linear_readout(out_layer, spk, beta), self.dueling)
        cur = out_layer(spk.flatten(0, 1)).unflatten(0, (steps, batch))  # [T, B, A]
        mems = []
        mem = None
        for cur_t in cur.unbind(0):
            mem = cur_t if mem is None else beta * mem + cur_t  # non-resetting integrator from zero
            mems.append(mem)
        return _dueling(torch.stack(mems).max(0).values, self.dueling)  # [T, B, A] -> [B, A]

    def _linear_readout(self, out_layer: nn.Linear, spk: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The `mean` or `last` readout of the output integrator in closed form. Its membrane is linear in
        its currents, mem[t] = sum_{s<=t} beta^(t-s) (W spk[s] + b), so both readouts are one weighted sum
        of the spikes over time through the layer: Q = W (sum_s c[s] spk[s]) + b sum_s c[s], with
        c[s] = beta^(T-1-s) (last) or (1/T) sum_{k<=T-1-s} beta^k (mean). The same Q as stepping the
        integrator T times, up to float32 summation order (tests compare it with the snnTorch loop), in
        two small products instead of 2T elementwise steps forward and back."""
        steps = spk.shape[0]
        powers = beta.to(spk.dtype) ** torch.arange(steps, device=spk.device, dtype=spk.dtype)  # beta^k
        coef = (powers.cumsum(0) / steps if self.readout == "mean" else powers).flip(0)  # c[s]
        weighted = (coef @ spk.flatten(1)).view(spk.shape[1:])  # [B, H]
        return F.linear(weighted, out_layer.weight, out_layer.bias * coef.sum())


def greedy_action(net: nn.Module, obs, device: torch.device | str = "cpu") -> int:
    """The action of highest Q for one observation (a batch of one, no gradients)."""
    with torch.no_grad():
        return int(net(torch.as_tensor(np.asarray(obs)[None], device=device)).argmax(1))


def build_q_network(cfg, obs_shape: Sequence[int], n_actions: int) -> nn.Module:
    """The Q-network the config asks for, on the CPU (the caller moves it)."""
    obs_shape = tuple(int(s) for s in obs_shape)
    if len(obs_shape) not in (1, 3):
        raise ConfigError(f"observation shape {obs_shape} is neither a vector [N] nor a channel-first image [C, H, W]")
    bf16, dueling = encoder_precision(cfg, obs_shape) == "bfloat16", cfg.dueling
    if cfg.architecture == "ann":
        return ANNQNetwork(obs_shape, n_actions, cfg.hidden_layers, conv_bf16=bf16, dueling=dueling,
                           encoder=cfg.encoder)
    return SpikingQNetwork(obs_shape, n_actions, cfg.hidden_layers, cfg.snn_tSteps, cfg.snn_beta, cfg.snn_mode,
                           cfg.snn_readout, cfg.snn_surrogate, conv_bf16=bf16, dueling=dueling, encoder=cfg.encoder)


def plain_to_dueling(state: dict, n_actions: int) -> dict:
    """The weights of a network with a plain Q head, for the same network with a dueling head that
    computes the same Q: the advantage rows are the plain head's rows and the value row is their mean,
    which the head subtracts again (Q = V + A − mean A). Exact for both architectures: the spiking
    output layer integrates its current linearly. The output layer is the last 2-D weight of the state
    (the neurons' decay and threshold that follow it in a spiking network are scalars)."""
    weight = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2][-1]
    bias = weight[:-len("weight")] + "bias"
    if state[weight].shape[0] != n_actions:
        raise ConfigError(f"the output layer {weight} has {state[weight].shape[0]} rows, not one per action "
                          f"({n_actions}); is it already a dueling head?")
    out = dict(state)
    for key in (weight, bias):
        out[key] = torch.cat([state[key].mean(0, keepdim=True), state[key]])
    return out


def parameter_count(cfg, obs_shape: Sequence[int], n_actions: int) -> int:
    """Trainable parameters of `build_q_network(cfg, obs_shape, n_actions)`, computed from the shapes
    alone so that a config too large for memory can be refused before anything is allocated. The ANN
    and both spiking modes have the same weights (the neurons' decay is a buffer, not a parameter)."""
    count = 0
    if len(obs_shape) == 3:
        c, h, w = conv_output_shape(obs_shape, cfg.encoder)
        channels = int(obs_shape[0])
        for out, kernel, _ in ENCODERS[cfg.encoder]:
            count += channels * out * kernel * kernel + out
            channels = out
        width = c * h * w
    else:
        width = int(obs_shape[0])
    for hidden in [*cfg.hidden_layers, n_actions + int(cfg.dueling)]:
        count += width * hidden + hidden
        width = hidden
    return count


def firing_rates(net: nn.Module, obs: torch.Tensor) -> dict[str, float]:
    """Each spiking layer's firing rate on `obs` (one forward pass without gradients; {} for an ANN)."""
    with torch.no_grad(), record_firing_rates(net) as rates:
        net(obs)
    return rates


class record_firing_rates:
    """`with record_firing_rates(net) as rates: net(obs)` fills `rates` with per-layer firing rates.

    Off by default, so a normal forward pays nothing for it; an ANN gives an empty dict.
    """

    def __init__(self, net: nn.Module):
        self.net = net
        self.rates: dict[str, float] = {}

    def __enter__(self) -> dict[str, float]:
        if isinstance(self.net, SpikingQNetwork):
            self.net.record_firing = True
            self.net.firing_rates = {}
        return self.rates

    def __exit__(self, *exc) -> None:
        if isinstance(self.net, SpikingQNetwork):
            self.net.record_firing = False
            self.rates.update({k: float(v) for k, v in self.net.firing_rates.items()})
            self.net.firing_rates = {}
