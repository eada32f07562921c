"""models.py: shapes, gradients, fast spiking path == naive snnTorch loop, state isolation, round trips."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from snn_reference import naive_forward
from config import ConfigError, load_config

IMAGE = (4, 40, 40)  # comfortable for both encoders (Nature needs >= 36, nips >= 20)
VECTOR = (8,)


def cfg(**kw):
    return load_config({"hidden_layers": [32, 16], "snn_tSteps": 5, "conv_precision": "float32", **kw})


def net_for(obs_shape, n_actions=3, seed=0, **kw):
    torch.manual_seed(seed)
    return models.build_q_network(cfg(**kw), obs_shape, n_actions)


def lively(net, gain=3.0):
    """Scale the weights so that every spiking layer fires (the equivalence must cover resets)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight"):
                p.mul_(gain)
    return net


def batch(obs_shape, b=3, uint8=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3 and uint8:
        return torch.randint(0, 256, (b, *obs_shape), generator=g, dtype=torch.uint8)
    return torch.randn((b, *obs_shape), generator=g) * 2


ARCHS = [{"architecture": "ann"}, {"architecture": "snn", "snn_mode": "hybrid"},
         {"architecture": "snn", "snn_mode": "full"}]
ARCH_IDS = ["ann", "hybrid", "full"]


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize("obs_shape", [IMAGE, VECTOR], ids=["image", "vector"])
def test_shapes_dtypes_finite_and_gradient_reaches_first_layer(arch, obs_shape):
    net = net_for(obs_shape, **arch)
    obs = batch(obs_shape)
    q = net(obs)
    assert q.shape == (3, 3) and q.dtype == torch.float32 and torch.isfinite(q).all()
    q.sum().backward()
    first = next(p for p in net.parameters() if p.dim() > 1)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_uint8_is_scaled_inside_the_network(arch):
    net = net_for(IMAGE, **arch)
    obs = batch(IMAGE)
    assert torch.equal(net(obs), net(obs.float() / 255.0))


def fast_and_naive(net, obs):
    """Q of the fast path and of the naive snnTorch loop, after checking that every spiking layer fired
    the same spikes at every step. The Q-values may then differ only by float32 summation order: a
    stateless layer runs once over [T*B, ...] in the fast path and T times over [B, ...] in the loop,
    and on some CPUs the matrix product rounds differently with the batch size (seen on a Xeon with
    AMX: 2.4e-7 on a Q of 1.9). One flipped spike would move Q by a weight's size, far above that."""
    fast_spikes, naive_spikes = [], []
    loop = net._spiking_loop

    def recorded(*args, **kw):
        out = loop(*args, **kw)
        fast_spikes.append(out.detach())
        return out

    net._spiking_loop = recorded  # the instance attribute shadows the method for this call only
    try:
        q_fast = net(obs)
    finally:
        del net._spiking_loop
    q_naive = naive_forward(net, obs, spikes=naive_spikes)
    assert len(fast_spikes) == len(naive_spikes) == len(net.lifs) - 1
    for i, (f, n) in enumerate(zip(fast_spikes, naive_spikes)):
        assert torch.equal(f, n), f"spiking layer {i}: {(f != n).sum().item()} spikes differ"
    torch.testing.assert_close(q_fast, q_naive, rtol=1e-5, atol=1e-6)
    return q_fast, q_naive


@pytest.mark.parametrize("mode", ["hybrid", "full"])
@pytest.mark.parametrize("obs_shape", [IMAGE, VECTOR], ids=["conv", "mlp"])
@pytest.mark.parametrize("beta", [0.5, 0.95])
@pytest.mark.parametrize("steps", [1, 5, 25])
# T=1 cannot fire at all in deeper layers (one step of input), so only the first layer is checked there
def test_fast_path_equals_naive_snntorch_loop(mode, obs_shape, beta, steps):
    net = lively(net_for(obs_shape, architecture="snn", snn_mode=mode, snn_tSteps=steps, snn_beta=beta))
    obs = batch(obs_shape, uint8=False)
    with models.record_firing_rates(net) as rates:
        q_fast, q_naive = fast_and_naive(net, obs)
    checked = rates.values() if steps > 1 else [rates["spike0"]]
    assert all(0 < r < 1 for r in checked), rates  # every layer fires, none saturates
    grads_fast = torch.autograd.grad(q_fast.square().sum(), list(net.parameters()))
    grads_naive = torch.autograd.grad(q_naive.square().sum(), list(net.parameters()))
    for (name, _), gf, gn in zip(net.named_parameters(), grads_fast, grads_naive):
        scale = gn.abs().max().item()
        torch.testing.assert_close(gf, gn, rtol=1e-4, atol=1e-5 * max(scale, 1e-12), msg=name)


@pytest.mark.parametrize("readout", ["mean", "last", "max"])
def test_every_readout_matches_reference(readout):
    net = lively(net_for(VECTOR, architecture="snn", snn_readout=readout, snn_tSteps=7))
    obs = batch(VECTOR)
    fast_and_naive(net, obs)


def test_firing_rates_are_opt_in():
    net = net_for(VECTOR, architecture="snn")
    net(batch(VECTOR))
    assert net.firing_rates == {} and net.record_firing is False
    with models.record_firing_rates(net) as rates:
        net(batch(VECTOR) * 3)
    assert list(rates) == net.layer_names() == ["spike0", "spike1"]
    assert all(isinstance(v, float) for v in rates.values())
    assert net.record_firing is False
    ann = net_for(VECTOR, architecture="ann")
    with models.record_firing_rates(ann) as rates:
        ann(batch(VECTOR))
    assert rates == {}


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_state_is_reset_every_forward_and_never_shared(arch):
    online = net_for(IMAGE, **arch)
    target = copy.deepcopy(online)
    a, b = batch(IMAGE, seed=1), batch(IMAGE, seed=2)
    qa, qb = online(a), target(b)
    # interleaving calls on two networks, or repeating one, changes nothing
    for _ in range(2):
        assert torch.equal(target(b), qb)
        assert torch.equal(online(a), qa)


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_state_dict_round_trip(arch, tmp_path):
    net = net_for(IMAGE, **arch)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    fresh = net_for(IMAGE, seed=123, **arch)
    obs = batch(IMAGE)
    assert not torch.equal(fresh(obs), net(obs))
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    assert torch.equal(fresh(obs), net(obs))


def test_impossible_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="too small for the 'nature' convolutional encoder .* at least 36x36"):
        models.build_q_network(cfg(encoder="nature"), (4, 30, 30), 5)
    with pytest.raises(ConfigError, match="too small for the 'nips' convolutional encoder .* at least 20x20"):
        models.build_q_network(cfg(encoder="nips"), (4, 19, 30), 5)
    for side, encoder in ((36, "nature"), (20, "nips")):  # the sizes the messages name do build
        assert models.conv_output_shape((4, side, side), encoder)[1:] == (1, 1)
    with pytest.raises(ConfigError, match="neither a vector"):
        models.build_q_network(cfg(), (4, 30), 5)


def test_carracing_default_shapes():
    net = models.build_q_network(load_config(), (4, 84, 84), 5)
    assert net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape == (2, 5)
    assert models.conv_output_shape((4, 84, 84)) == (64, 7, 7)
    assert models.conv_output_shape((4, 84, 84), "nips") == (32, 9, 9)


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_the_nips_encoder_is_two_smaller_convolutions(arch):
    """`encoder: nips` builds the first DQN's 16- and 32-channel convolutions in every architecture (the
    full SNN gets a spiking layer per convolution) and learns through them."""
    net = net_for(IMAGE, encoder="nips", **arch)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(16, 8, 4), (32, 4, 2)]
    if arch.get("snn_mode") == "full":
        assert len(net.lifs) == len(convs) + 3  # two convolutions, two hidden layers, the output
    q = net(batch(IMAGE))
    q.sum().backward()
    assert convs[0].weight.grad.abs().sum() > 0
    nature = net_for(IMAGE, encoder="nature", **arch)
    assert [m.out_channels for m in nature.modules() if isinstance(m, torch.nn.Conv2d)] == [32, 64, 64]
    with pytest.raises(RuntimeError):  # the other encoder's weights do not fit
        nature.load_state_dict(net.state_dict())


def test_resolve_device():
    assert models.resolve_device("cpu").type == "cpu"
    assert models.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            models.resolve_device("cuda")


@pytest.mark.parametrize("arch, mode", [("ann", "hybrid"), ("snn", "hybrid"), ("snn", "full")])
@pytest.mark.parametrize("obs_shape", [(4, 84, 84), (3, 64, 48), (8,)])
@pytest.mark.parametrize("dueling", [False, True], ids=["plain", "dueling"])
@pytest.mark.parametrize("encoder", ["nature", "nips"])
def test_parameter_count_from_shapes_equals_the_built_network(arch, mode, obs_shape, dueling, encoder):
    c = cfg(architecture=arch, snn_mode=mode, hidden_layers=[32, 16], dueling=dueling, encoder=encoder)
    built = sum(p.numel() for p in models.build_q_network(c, obs_shape, 5).parameters())
    assert models.parameter_count(c, obs_shape, 5) == built


@pytest.mark.parametrize("arch", ARCHS[:2], ids=ARCH_IDS[:2])
def test_bfloat16_encoder_is_close_to_float32_with_the_same_weights(arch):
    """conv_precision bfloat16 changes the encoder's arithmetic only: same parameters and state_dict
    keys, float32 Q-values within bfloat16's rounding of the float32 ones, gradients reach the convs."""
    plain, fast = net_for(IMAGE, **arch), net_for(IMAGE, conv_precision="bfloat16", **arch)
    fast.load_state_dict(plain.state_dict())  # strict: the same keys and shapes
    obs = batch(IMAGE, b=8)
    q, q16 = plain(obs), fast(obs)
    assert q16.dtype == torch.float32 and torch.allclose(q, q16, atol=0.05 * q.abs().max().item() + 1e-3)
    encoder = fast.encoder if arch["architecture"] == "snn" else fast.net[:fast.encoder_len]
    x = models._to_float(obs)
    features, features16 = encoder(x), models._encode(encoder, x, True)
    assert features16.dtype == torch.float32 and not torch.equal(features, features16)  # bfloat16 was used
    assert torch.allclose(features, features16, rtol=0.03, atol=0.03 * features.abs().max().item())
    q16.sum().backward()
    first = next(p for p in fast.parameters() if p.dim() > 1)
    assert first.grad is not None and first.grad.dtype == torch.float32 and first.grad.abs().sum() > 0


def test_bytes_straight_to_bfloat16_are_what_autocast_makes_of_the_float32_frames():
    """The bfloat16 encoder's input is converted from the replay's bytes directly: bit for bit the
    bfloat16 that autocast casts the float32 frames to, for every byte value, and so the same Q."""
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    direct = models._to_float(every, torch.bfloat16)
    assert direct.dtype == torch.bfloat16 and torch.equal(direct, models._to_float(every).to(torch.bfloat16))
    # an update's batch (converted, then laid out channels-last): the same values, in that layout
    stacks = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 4, 84, 84), dtype=np.uint8))
    laid_out = models._to_float(stacks, torch.bfloat16)
    assert laid_out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(laid_out, models._to_float(stacks).to(torch.bfloat16))
    for arch in ARCHS[:2]:
        fast = net_for(IMAGE, conv_precision="bfloat16", **arch)
        obs = batch(IMAGE, b=4)
        encoder = fast.encoder if arch["architecture"] == "snn" else fast.net[:fast.encoder_len]
        assert torch.equal(models._encode(encoder, models._to_float(obs), True),
                           models._encode(encoder, models._to_float(obs, torch.bfloat16), True))


@pytest.mark.parametrize("arch", ARCHS[:2], ids=ARCH_IDS[:2])
def test_the_channels_last_bfloat16_encoder_equals_the_default_layout(arch):
    """The bfloat16 encoder runs channels-last (its weights and its frames): the same Q and gradients as the
    same network in the default layout fed the default layout's frames — at a batch of 64 frames of 84x84
    (CarRacing's update), where oneDNN's kernels are the ones training uses. Bit for bit on a CPU with AMX,
    where oneDNN runs both layouts with the same channels-last kernels; on AVX512-BF16 without AMX (AMD EPYC
    here) it picks other kernels for the default layout, and the two agree to bfloat16's rounding."""
    same_kernels = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    fast = lively(net_for((4, 84, 84), conv_precision="bfloat16", hidden_layers=[64], **arch), 1.5)
    encoder = fast.encoder if arch["architecture"] == "snn" else fast.net[:fast.encoder_len]
    convs = [m for m in encoder if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    plain = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    obs = batch((4, 84, 84), b=64)
    x = models.network_input(fast, obs)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    q_fast, q_plain = fast(obs), plain(x.contiguous())  # the default layout's frames: the values of x
    assert q_fast.abs().sum() > 0 and (torch.equal(q_fast, q_plain) if same_kernels else
                                       torch.allclose(q_fast, q_plain, rtol=1e-2, atol=1e-3))
    (q_fast ** 2).sum().backward()
    (q_plain ** 2).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        scale = float(b.grad.abs().max())  # bfloat16 keeps 8 bits: gradients agree to ~1/128 of their size
        assert scale > 0 and (torch.equal(a.grad, b.grad) if same_kernels else
                              float((a.grad - b.grad).abs().max()) <= scale / 64), name


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("obs_shape", [IMAGE, VECTOR], ids=["image", "vector"])
def test_a_batch_converted_once_gives_the_q_of_the_bytes(arch, precision, obs_shape):
    """The update converts s' once for the online and the target network (models.network_input): the
    same Q-values, bit for bit, as each network converting the bytes itself."""
    if precision == "bfloat16" and arch.get("snn_mode") == "full":
        pytest.skip("a full SNN refuses a bfloat16 encoder")
    net = net_for(obs_shape, conv_precision=precision, **arch)
    other = net_for(obs_shape, seed=1, conv_precision=precision, **arch)  # a target network: other weights
    obs = batch(obs_shape, b=4)  # bytes for an image, floats for a vector
    x = models.network_input(net, obs)
    assert x.dtype == net.input_dtype
    want_bf16 = precision == "bfloat16" and len(obs_shape) == 3
    assert net.input_dtype == (torch.bfloat16 if want_bf16 else torch.float32)
    for n in (net, other):
        assert torch.equal(n(x), n(obs))


def test_bfloat16_is_refused_for_a_full_snn():
    with pytest.raises(ConfigError, match="conv_precision"):
        cfg(architecture="snn", snn_mode="full", conv_precision="bfloat16")


def test_native_bfloat16_agrees_with_the_cpu_flags():
    flags = Path("/proc/cpuinfo")
    if not flags.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    words = set(flags.read_text().split())
    assert models.native_bfloat16() == bool(words & {"avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize("arch, mode", [("ann", "hybrid"), ("snn", "hybrid"), ("snn", "full")])
@pytest.mark.parametrize("obs_shape", [IMAGE, (8,)], ids=["image", "vector"])
def test_auto_precision_takes_bfloat16_only_for_an_encoder_on_a_cpu_that_has_it(arch, mode, obs_shape):
    """The default `auto` never refuses (a full SNN falls back to float32) and picks what the network
    is then built with; explicit values pass through."""
    c = cfg(architecture=arch, snn_mode=mode, conv_precision="auto", device="cpu")
    encoder = len(obs_shape) == 3 and mode == "hybrid"
    want = "bfloat16" if encoder and models.native_bfloat16() else "float32"
    assert models.encoder_precision(c, obs_shape) == want
    assert models.build_q_network(c, obs_shape, 3).conv_bf16 == (want == "bfloat16")
    assert models.encoder_precision(cfg(architecture=arch, snn_mode=mode, conv_precision="float32"), obs_shape) == \
        "float32"
    if mode == "hybrid":
        assert models.encoder_precision(cfg(architecture=arch, conv_precision="bfloat16"), obs_shape) == "bfloat16"


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_dueling_head_is_value_plus_centred_advantages(arch):
    """Q = V + A - mean(A) from the output layer's [V, A] (for the SNN after the membrane readout):
    equal to the plain network's output recombined, and the advantages' mean is V."""
    torch.manual_seed(3)
    net = lively(net_for(VECTOR, n_actions=4, dueling=True, **arch))
    obs = batch(VECTOR, b=5)
    q = net(obs)
    net.dueling = False
    raw = net(obs)  # [B, 1 + A]: V, A_1..A_4
    assert raw.shape == (5, 5) and q.shape == (5, 4)
    v, a = raw[:, :1], raw[:, 1:]
    assert torch.allclose(q, v + a - a.mean(1, keepdim=True), atol=1e-6)
    assert torch.allclose(q.mean(1), v.squeeze(1), atol=1e-5)
    net.dueling = True
    q.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch,obs_shape", [({"architecture": "ann"}, IMAGE), ({"architecture": "ann"}, VECTOR),
                                            ({"architecture": "snn", "snn_mode": "hybrid"}, IMAGE),
                                            ({"architecture": "snn", "snn_mode": "full"}, VECTOR)])
def test_plain_head_weights_start_a_dueling_head_with_the_same_q(arch, obs_shape):
    """init_weights from a plain head into a dueling one: every action's Q is kept (the value row is
    the mean of the action rows, which the head subtracts again), and the head then trains as a
    dueling head (V and A get gradients of their own)."""
    plain = lively(net_for(obs_shape, n_actions=4, seed=5, **arch))
    dueling = net_for(obs_shape, n_actions=4, seed=6, dueling=True, **arch)
    dueling.load_state_dict(models.plain_to_dueling(plain.state_dict(), 4))
    obs = batch(obs_shape, b=6)
    with torch.no_grad():
        want, got = plain(obs), dueling(obs)
    assert got.shape == want.shape == (6, 4)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    assert not torch.equal(got, net_for(obs_shape, n_actions=4, seed=6, dueling=True, **arch)(obs))
    dueling(obs).sum().backward()
    out = [p for p in dueling.parameters() if p.dim() == 2][-1]
    assert out.shape[0] == 5 and out.grad[0].abs().sum() > 0  # the value row learns
    with pytest.raises(ConfigError, match="already a dueling head"):
        models.plain_to_dueling(dueling.state_dict(), 4)


def test_a_checkpoint_without_a_shape_key_added_later_resumes_with_its_default():
    from checkpoints import check_shape

    saved = {k: v for k, v in cfg().to_dict().items() if k != "dueling"}  # written before the key existed
    check_shape(saved, cfg(), "the run's checkpoint", "")
    with pytest.raises(ConfigError, match="'dueling' is true"):
        check_shape(saved, cfg(dueling=True), "the run's checkpoint", "")
    older = {k: v for k, v in cfg().to_dict().items() if k != "encoder"}  # trained with the Nature encoder
    check_shape(older, cfg(encoder="nature"), "the run's checkpoint", "")
    with pytest.raises(ConfigError, match="'encoder'"):
        check_shape(older, cfg(encoder="nips"), "the run's checkpoint", "")
