import pytest
import torch

from pretrain.colour import lab_to_rgb, lab_views, rgb_to_lab
from pretrain.methods import METHODS, MethodSettings, build_method
from pretrain.samplers import SAMPLERS, build_sampler

# written out, not derived from the code under test: only MoCo keeps the queue MoCHi mixes from
FORBIDDEN = [("ir", "mochi"), ("cmc", "mochi"), ("simclr", "mochi")]
COMBINATIONS = [(method, sampler) for method in METHODS for sampler in SAMPLERS if (method, sampler) not in FORBIDDEN]
TINY_PARAMS = {"ring": {"w_out": 0.5, "w_in": 0.1, "anneal": "constant"}, "ball": {"w_out": 0.5, "anneal": "constant"},
               "mochi": {"hardest": 4, "mixed": 3, "query_mixed": 2}}


def test_every_method_sampler_pair_is_covered():
    assert len(COMBINATIONS) == 4 * 6 - 3 and set(SAMPLERS) == {"nce", "ring", "ball", "dcl", "hcl", "mochi"}


def tiny(method, sampler, num_samples=12):
    torch.manual_seed(0)
    settings = MethodSettings(num_negatives=8, queue_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return build_method(method, settings, build_sampler(sampler, **TINY_PARAMS.get(sampler, {})), num_samples)


@pytest.mark.filterwarnings("ignore::pretrain.samplers.BandWarning")  # tiny bank; warn-once is tested elsewhere
@pytest.mark.parametrize("method,sampler", COMBINATIONS)
def test_one_training_step(method, sampler):
    model = tiny(method, sampler)
    batch = 4
    views = [torch.randn(batch, 3, 16, 16) for _ in range(model.num_views)]
    index = torch.tensor([0, 3, 5, 7])
    if model.has_queue:  # past keys as after some training: as similar to the query as its own key, so DCL's
        with torch.no_grad():  # estimate is not clamped to its floor (which would leave no gradient)
            model.queue.copy_(model.key_encoder(torch.randn(len(model.queue), 3, 16, 16)))
    memory_before = {k: v.clone() for k, v in model.state_dict().items() if k in ("bank", "bank_l", "queue")}
    params = [p for name in model.trainable_encoders() for p in getattr(model, name).parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    before = model.encoder.backbone.conv1.weight.detach().clone()
    loss = model.loss(views, index, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 1e-3
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad for p in params if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.backbone.conv1.weight.grad.abs().max() > 0
    optimizer.step()
    model.after_step()
    assert not torch.equal(before, model.encoder.backbone.conv1.weight)
    for key, old in memory_before.items():
        new = model.state_dict()[key]
        if key == "queue":
            assert not torch.equal(old[:batch], new[:batch]) and torch.equal(old[batch:], new[batch:])
            assert int(model.queue_pointer) == batch
        else:  # only the batch's bank rows change, and stay unit norm
            changed = (old != new).any(dim=1).nonzero().flatten().tolist()
            assert changed == index.tolist()
            assert torch.allclose(new.norm(dim=1), torch.ones(len(new)), atol=1e-5)


@pytest.mark.parametrize("method,sampler", FORBIDDEN)
def test_forbidden_combinations_raise(method, sampler):
    with pytest.raises(ValueError, match="mochi|not available"):
        tiny(method, sampler)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="valid methods: ir, cmc, moco, simclr"):
        build_method("byol", MethodSettings(), build_sampler("nce"), 4)


def test_simclr_masks_self_similarity():
    model = tiny("simclr", "nce")
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    loss = model.loss([x, x], torch.arange(3), None)
    with torch.no_grad():
        z = model.encoder(torch.cat([x, x]))
    logits = z @ z.T / model.temperature
    expected = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        others = [logits[i, j] for j in range(6) if j != i]  # self excluded, positive kept in the partition
        expected += torch.logsumexp(torch.stack(others), 0) - logits[i, partner]
    assert loss.item() == pytest.approx((expected / 6).item(), rel=1e-5)


def test_simclr_over_ranks_equals_one_process_on_the_global_batch():
    from pretrain.methods import simclr_logits

    torch.manual_seed(0)
    world, batch, t = 3, 4, 0.1
    view0 = torch.nn.functional.normalize(torch.randn(world * batch, 8), dim=1)
    view1 = torch.nn.functional.normalize(torch.randn(world * batch, 8), dim=1)
    sampler = build_sampler("nce")
    # one process holding the whole batch: rows [view 0; view 1]
    single = torch.cat([view0, view1])
    pos, neg = simclr_logits(single, single, 0, t)
    assert neg.shape == (2 * world * batch, 2 * world * batch - 2)
    expected = sampler.loss(pos, neg, t, None)
    # the same images split over ranks: each rank holds [its view 0; its view 1] and sees every rank's rows
    locals_ = [torch.cat([view0[r * batch:(r + 1) * batch], view1[r * batch:(r + 1) * batch]]) for r in range(world)]
    gathered = torch.cat(locals_)
    losses = []
    for r, local in enumerate(locals_):
        pos_r, neg_r = simclr_logits(local, gathered, r * 2 * batch, t)
        assert neg_r.shape == (2 * batch, 2 * world * batch - 2)
        losses.append(sampler.loss(pos_r, neg_r, t, None))
    assert torch.stack(losses).mean().item() == pytest.approx(expected.item(), rel=1e-6)


def test_ir_loss_matches_a_hand_computation():
    model = tiny("ir", "nce")
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    index = torch.tensor([1, 4])
    generator = torch.Generator().manual_seed(5)
    loss = model.loss([x], index, generator)
    # num_negatives = K = 8 terms: the positive and 7 uniform bank draws
    negatives = torch.randint(0, 12, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = model.encoder(x)
    pos = (z * model.bank[index]).sum(1) / 0.07
    neg = torch.einsum("bd,bkd->bk", z, model.bank[negatives]) / 0.07
    expected = (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lab_round_trip_and_views():
    rgb = torch.rand(2, 3, 5, 5)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    assert white[0].item() == pytest.approx(100, abs=0.1) and white[1:].abs().max() < 0.1
    grey, _ = lab_views(rgb)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-4) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-4)
    assert torch.allclose(rgb_to_lab(grey)[:, 0], rgb_to_lab(rgb)[:, 0], atol=0.05)
    # colours that stay in gamut at L = 50 keep their ab and get lightness 50
    muted = 0.4 + 0.2 * rgb
    _, colour = lab_views(muted)
    assert torch.allclose(rgb_to_lab(colour)[:, 0], torch.full((2, 5, 5), 50.0), atol=0.05)
    assert torch.allclose(rgb_to_lab(colour)[:, 1:], rgb_to_lab(muted)[:, 1:], atol=0.1)


@pytest.mark.parametrize("method", ["ir", "cmc"])
@pytest.mark.parametrize("sampler", ["nce", "ring"])
def test_bank_methods_use_k_terms_including_the_positive(method, sampler):
    """As the IR paper and the official Ring code: K = 4096 terms = the positive + 4095 bank draws."""
    seen = []
    negatives = build_sampler(sampler, **TINY_PARAMS.get(sampler, {}))
    real_loss = negatives.loss

    def spy(pos, neg, *args, **kwargs):
        seen.append((tuple(pos.shape), tuple(neg.shape)))
        return real_loss(pos, neg, *args, **kwargs)

    object.__setattr__(negatives, "loss", spy)
    settings = MethodSettings(num_negatives=4096, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = build_method(method, settings, negatives, num_samples=10000)
    model.loss([torch.randn(2, 3, 16, 16)], torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert seen and all(pos == (2,) and neg == (2, 4095) for pos, neg in seen)  # 1 + 4095 = K


def test_k_below_two_is_refused():
    from pretrain.config import ConfigError
    from pretrain.recipes import recipe_config

    with pytest.raises(ConfigError, match="num_negatives .K: softmax terms.* must be >= 2, got 1"):
        recipe_config("digits_ir_nce", {"method.num_negatives": 1})
