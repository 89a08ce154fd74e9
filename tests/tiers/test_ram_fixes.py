"""The DNC's known fixes as dense RAM options: masked content addressing, de-allocation,
link sharpness, interface layer norm, and a content-only (link-free) memory."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from tiered.tiers import RAM, addressing
from tiered.tiers.ram_dense import CLASSIC, _layout, parse_ram_interface, sharpen

W, R = 5, 2
BIG = 30.0


def interface(ram: RAM, batch: int, **parts: torch.Tensor) -> torch.Tensor:
    """Interface logits in the RAM's layout: given parts as (batch, size) tensors, the
    rest closed (gates -BIG, strengths 0, masks open)."""
    read, write = _layout(ram.width, ram.read_heads, ram.write_heads, ram.options)
    defaults = {"free_gates": -BIG, "allocation_gates": BIG, "write_gates": -BIG,
                "read_masks": BIG, "write_masks": BIG, "erase": BIG}  # fmt: skip
    pieces = []
    for name, size in read + write:
        if name in parts:
            piece = parts[name].to(torch.float64).reshape(batch, size)
        else:
            piece = torch.full((batch, size), defaults.get(name, 0.0), dtype=torch.float64)
        pieces.append(piece)
    out = torch.cat(pieces, dim=-1)
    assert out.shape == (batch, ram.interface_size)
    return out


def content_modes(ram: RAM, batch: int) -> torch.Tensor:
    """Read mode logits choosing the content mode for every head."""
    H = ram.write_heads
    modes = torch.full((batch, ram.read_heads, 1 + 2 * H), -BIG, dtype=torch.float64)
    modes[:, :, H] = BIG
    return modes


@pytest.mark.parametrize(
    "kwargs, change",
    [
        ({}, 0),
        ({"content_mask": True}, (R + 1) * W),
        ({"link_sharpness": True}, 2 * R),
        ({"links": 0}, -R * 3),
        ({"deallocate": True}, 0),
        ({"interface_norm": True}, 0),
    ],
)
def test_each_option_changes_the_interface_by_its_documented_features(kwargs, change):
    classic = RAM(9, W, read_heads=R, sparse=False)
    ram = RAM(9, W, read_heads=R, sparse=False, **kwargs)
    assert ram.interface_size == classic.interface_size + change
    # The write features are the last ones, whatever the options.
    (writes,) = ram.write_slices
    _, write_parts = _layout(W, R, 1, ram.options)
    assert writes.stop == ram.interface_size
    assert writes.stop - writes.start == sum(size for _, size in write_parts)
    p = parse_ram_interface(torch.randn(3, ram.interface_size), W, R, 1, ram.options)
    assert (p.read_modes is None) == (kwargs.get("links") == 0)
    assert (p.read_masks is not None) == bool(kwargs.get("content_mask"))
    if p.read_masks is not None:
        assert p.read_masks.shape == (3, R, W) and p.write_masks.shape == (3, 1, W)
        assert ((p.read_masks > 0) & (p.read_masks < 1)).all()
    if kwargs.get("link_sharpness"):
        assert p.sharpness.shape == (3, R, 2) and (p.sharpness >= 1).all()


def test_every_fix_is_off_by_default():
    ram = RAM(9, W, sparse=False)
    assert ram.options == CLASSIC and ram.norm is None
    assert "mask" not in repr(ram) and "deallocate" not in repr(ram)
    on = RAM(9, W, sparse=False, content_mask=True, deallocate=True, link_sharpness=True,
             interface_norm=True)  # fmt: skip
    for name in ("content_mask", "deallocate", "link_sharpness", "interface_norm"):
        assert f"{name}=True" in repr(on)


def test_masked_content_addressing_ignores_the_masked_features():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(2, 6, W, generator=g, dtype=torch.float64)
    keys = torch.randn(2, 3, W, generator=g, dtype=torch.float64)
    strengths = torch.full((2, 3), 5.0, dtype=torch.float64)
    # An open mask is plain content addressing.
    ones = torch.ones_like(keys)
    torch.testing.assert_close(
        addressing.masked_content_weights(memory, keys, ones, strengths),
        addressing.content_weights(memory, keys, strengths),
    )
    # With feature 0 masked, rows that differ only in feature 0 are scored alike.
    memory[:, 1] = memory[:, 0]
    memory[:, 1, 0] += 7.0
    mask = ones.clone()
    mask[..., 0] = 0.0
    weights = addressing.masked_content_weights(memory, keys, mask, strengths)
    torch.testing.assert_close(weights[:, :, 0], weights[:, :, 1])
    plain = addressing.content_weights(memory, keys, strengths)
    assert (plain[:, :, 0] - plain[:, :, 1]).abs().max() > 1e-3
    # Zero keys, zero memory, zero masks: uniform and finite gradients.
    zeros = [torch.zeros_like(t).requires_grad_() for t in (memory, keys, mask)]
    out = addressing.masked_content_weights(*zeros, strengths)
    torch.testing.assert_close(out, torch.full_like(out, 1 / 6))
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), zeros)
    assert all(torch.isfinite(t).all() for t in grads)


def _write_then_free(deallocate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write v into an empty RAM, read it back (one-hot read weights), then free it."""
    ram = RAM(4, W, read_heads=1, sparse=False, deallocate=deallocate).double()
    v = torch.arange(1.0, W + 1, dtype=torch.float64).unsqueeze(0)
    state = ram.initial_state(1, dtype=torch.float64)
    modes = content_modes(ram, 1)
    big = torch.full((1, 1), BIG)
    write = interface(ram, 1, write_vectors=v, write_gates=big, read_keys=v,
                      read_strengths=big, read_modes=modes)  # fmt: skip
    _, state, _ = ram(write, state)
    slot = int(state.read_weights[0, 0].argmax())
    assert state.read_weights[0, 0, slot] > 0.999
    free = interface(ram, 1, free_gates=torch.full((1, 1), BIG), read_modes=modes)
    _, state, stats = ram(free, state)
    return state.memory[0, slot], v[0], stats.rewrite[0]


def test_deallocation_erases_what_the_free_gates_release():
    kept, v, rewrite = _write_then_free(deallocate=False)
    torch.testing.assert_close(kept, v, rtol=1e-5, atol=0)  # the DNC's stale content
    assert rewrite == pytest.approx(0.0, abs=1e-12)
    erased, v, rewrite = _write_then_free(deallocate=True)
    assert erased.abs().max() < 1e-6
    assert rewrite == pytest.approx(float(v.sum()), rel=1e-5)  # counted as erased content


def test_a_slow_ram_deallocates_only_on_its_ticks():
    # Period 2: step 1 is an off-tick, where nothing may change the memory, freed or not.
    ram = RAM(4, W, read_heads=1, sparse=False, deallocate=True, period=2).double()
    state = ram.initial_state(1, dtype=torch.float64)
    v = torch.arange(1.0, W + 1, dtype=torch.float64).unsqueeze(0)
    big = torch.full((1, 1), BIG)
    modes = content_modes(ram, 1)
    write = interface(ram, 1, write_vectors=v, write_gates=big, read_keys=v,
                      read_strengths=big, read_modes=modes)  # fmt: skip
    _, state, _ = ram(write, state)  # tick: written and read back
    before = state.memory.clone()
    free = interface(ram, 1, free_gates=big, read_modes=modes)
    _, state, stats = ram(free, state)  # off-tick: free gates open
    torch.testing.assert_close(state.memory, before, rtol=0, atol=0)
    assert stats.rewrite[0] == 0
    _, state, stats = ram(free, state)  # the next tick frees the slot's content
    assert stats.rewrite[0] > 0


def test_sharpening_normalises_and_sharpens_link_weights():
    g = torch.Generator().manual_seed(1)
    d = 0.5 * torch.rand(2, 3, 2, 7, generator=g, dtype=torch.float64)
    one = sharpen(d, torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(one, d / d.sum(-1, keepdim=True))
    sharp = sharpen(d, torch.full((2, 3), 1e4, dtype=torch.float64))
    hot = torch.nn.functional.one_hot(d.argmax(-1), 7).to(d.dtype)
    torch.testing.assert_close(sharp, hot, atol=1e-3, rtol=0)
    d = d.requires_grad_()
    s = (1 + torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert gradcheck(sharpen, (d, s))
    # No links (all zero): zero weights, finite gradients.
    zero = torch.zeros(2, 3, 2, 7, dtype=torch.float64, requires_grad=True)
    out = sharpen(zero, s)
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), (zero, s))
    assert all(torch.isfinite(t).all() for t in grads)


def test_a_link_free_dense_memory_keeps_no_link_state_and_reads_by_content():
    ram = RAM(6, W, read_heads=R, write_heads=2, sparse=False, links=0).double()
    state = ram.initial_state(3, dtype=torch.float64)
    assert state.link.shape == (3, 2, 0, 0) and state.precedence.shape == (3, 2, 0)
    x = torch.randn(3, ram.interface_size, dtype=torch.float64)
    _, state, _ = ram(x, state)
    assert state.link.shape == (3, 2, 0, 0)
    p = parse_ram_interface(ram.norm(x) if ram.norm else x, W, R, 2, ram.options)
    content = addressing.content_weights(state.memory, p.read_keys, p.read_strengths)
    torch.testing.assert_close(state.read_weights, content)


def test_interface_norm_makes_the_step_invariant_to_the_interface_scale():
    torch.manual_seed(0)
    ram = RAM(6, W, read_heads=R, sparse=False, interface_norm=True).double()
    assert sum(p.numel() for p in ram.parameters()) == 2 * ram.interface_size
    x = torch.randn(2, ram.interface_size, dtype=torch.float64)
    state = ram.initial_state(2, dtype=torch.float64)
    a, _, _ = ram(x, state)
    b, _, _ = ram(3.0 * x + 1.5, state)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # LayerNorm's eps


def test_gradcheck_with_every_fix_on():
    torch.manual_seed(0)
    ram = RAM(5, 3, read_heads=2, write_heads=2, sparse=False, content_mask=True,
              deallocate=True, link_sharpness=True, interface_norm=True).double()  # fmt: skip
    state = ram.initial_state(2, dtype=torch.float64)
    x = torch.randn(2, 3, ram.interface_size, dtype=torch.float64, requires_grad=True)

    def run(inputs):
        s, outs = state, []
        for t in range(inputs.shape[1]):
            words, s, stats = ram(inputs[:, t], s)
            outs.append(words + stats.rewrite.unsqueeze(-1))
        return torch.stack(outs)

    assert gradcheck(run, (x,))


@pytest.mark.parametrize("option", ["content_mask", "deallocate", "link_sharpness"])
def test_a_dense_option_on_a_sparse_ram_names_the_option_and_the_mode(option):
    with pytest.raises(ValueError, match=rf"{option}=True is a dense-mode option.*sparse"):
        RAM(4096, W, sparse=True, **{option: True})


def test_link_sharpness_without_links_is_an_error():
    with pytest.raises(ValueError, match="link_sharpness=True.*links=0"):
        RAM(8, W, sparse=False, links=0, link_sharpness=True)


def test_interface_norm_works_in_sparse_mode_too():
    ram = RAM(64, W, read_heads=R, sparse=True, index="exact", interface_norm=True).double()
    state = ram.initial_state(2, dtype=torch.float64)
    words, _, _ = ram(torch.randn(2, ram.interface_size, dtype=torch.float64), state)
    assert words.shape == (2, R * W) and torch.isfinite(words).all()


def test_the_fix_sweeps_build_the_options_their_variants_name():
    """Each variant of the fix ablations sets every flag, so what it builds is what it names
    (a variant's tier list merges into the base stack's item by item)."""
    from pathlib import Path

    from tiered.cli import make_cli
    from tiered.sweeps.spec import load_sweep

    root = Path(__file__).resolve().parents[2] / "experiments" / "sweeps"
    expected = {
        "classic": (True, False, False, False, False),
        "content_mask": (True, True, False, False, False),
        "deallocate": (True, False, True, False, False),
        "link_sharpness": (True, False, False, True, False),
        "interface_norm": (True, False, False, False, True),
        "link_free": (False, False, False, False, False),
        "all_fixes": (True, True, True, True, True),
    }
    for sweep in ("dnc_fixes_copy", "dnc_fixes_recall"):
        seen = set()
        for run in load_sweep(root / f"{sweep}.yaml").runs():
            if run.seed != 0:
                continue
            cli = make_cli([*run.args, "--trainer.logger", "false"], run=False)
            (ram,) = cli.model.controller.tiers
            name = run.variant.removeprefix("config=")
            o = ram.options
            assert (o.links, o.content_mask, o.deallocate, o.sharpness, ram.interface_norm) == (
                expected[name]
            ), name
            assert (ram.slots, ram.width, ram.read_heads, ram.sparse) == (32, 16, 1, False)
            seen.add(name)
        assert seen == set(expected)
