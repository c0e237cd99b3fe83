"""The typed graph (simulator.ir) and the walk (simulator.walk), numpy only:
wiring checks, shape inference, dispatch, keep order and tensor release."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import ir
from simulator.errors import InputError
from simulator.walk import last_reads, walk

D, H = 4, 2


def _graph(**over) -> ir.Graph:
    """images -> patchify -> linear -> tokens -> pos -> split heads -> q k^T ->
    softmax -> a v -> merge -> linear(+residual) -> pool -> head."""
    rng = np.random.default_rng(0)
    ops = (
        ir.Patchify("patchify", ("images",), ("input",), patch_size=(2, 2)),
        ir.Linear("patch_embed", ("input",), ("patch_embed",)),
        ir.TokenConcat("prefix_tokens", ("patch_embed",), ("tokens",), tokens=("cls",)),
        ir.AddConst("pos_embed", ("tokens",), ("x0",)),
        ir.Linear("qkv", ("x0",), ("qkv",)),
        ir.SplitHeads("split", ("qkv",), ("q", "k", "v"), num_heads=H),
        ir.MatMul("qk", ("q", "k"), ("attn_logits",), transpose_b=True, scale=0.5),
        ir.Softmax("softmax", ("attn_logits",), ("attn",)),
        ir.MatMul("av", ("attn", "v"), ("av",)),
        ir.MergeHeads("merge", ("av",), ("attn_out",)),
        ir.Linear("proj", ("attn_out", "x0"), ("x_mid",)),
        ir.Pool("pool", ("x_mid",), ("pool",), mode="token"),
        ir.Head("head", ("pool",), ("logits",)),
    )
    params = {
        "patch_embed": dict(weight=rng.standard_normal((D, 4)), bias=rng.standard_normal(D)),
        "prefix_tokens": dict(tokens=rng.standard_normal((1, D))),
        "pos_embed": dict(value=rng.standard_normal((5, D))),
        "qkv": dict(weight=rng.standard_normal((3 * D, D)), bias=np.zeros(3 * D)),
        "proj": dict(weight=rng.standard_normal((D, D)), bias=np.zeros(D)),
        "head": dict(weight=rng.standard_normal((3, D)), bias=np.zeros(3)),
    }
    kw = dict(ops=ops, input="images", outputs=("logits",), params=params, image_size=(4, 4), in_chans=1)
    return ir.Graph(**{**kw, **over})


class NumpyOps:
    """A float64 numpy op set covering the kinds `_graph` uses."""

    def __init__(self, graph):
        self.p = graph.params

    def patchify(self, op, x):
        b, c, h, w = x.shape
        (ph, pw), (gh, gw) = op.patch_size, op.grid(h, w)
        x = x[:, :, :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw)
        return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)

    def linear(self, op, x, res=None):
        y = x @ self.p[op.name]["weight"].T + self.p[op.name]["bias"]
        return y if res is None else y + res

    head = linear

    def token_concat(self, op, x):
        t = np.broadcast_to(self.p[op.name]["tokens"], (x.shape[0],) + self.p[op.name]["tokens"].shape)
        return np.concatenate([t, x], axis=1)

    def add_const(self, op, x):
        return x + self.p[op.name]["value"]

    def split_heads(self, op, x):
        b, t, c = x.shape
        n = len(op.outputs)
        return tuple(x.reshape(b, t, n, op.num_heads, -1).transpose(2, 0, 3, 1, 4))

    def matmul(self, op, a, b):
        return op.scale * (a @ (np.swapaxes(b, -1, -2) if op.transpose_b else b))

    def softmax(self, op, x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def merge_heads(self, op, x):
        b, h, t, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)

    def pool(self, op, x):
        return x[:, op.index] if op.mode == "token" else x[:, op.num_prefix_tokens:].mean(1)


def test_shapes_follow_the_ops():
    s = ir.tensor_shapes(_graph(), batch=3)
    assert s["input"] == (3, 4, 4) and s["tokens"] == s["x0"] == (3, 5, D)
    assert s["q"] == (3, H, 5, D // H) and s["attn"] == (3, H, 5, 5) and s["attn_out"] == (3, 5, D)
    assert s["pool"] == (3, D) and s["logits"] == (3, 3)
    assert list(s) == _graph().tensor_names()


def test_remainder_rows_are_dropped_and_padding_rounds_up():
    assert ir.tensor_shapes(_graph(), image_size=(5, 5))["input"] == (1, 4, 4)
    pad = ir.Patchify("p", ("i",), ("o",), patch_size=(2, 3), pad=True)
    assert pad.grid(5, 7) == (3, 3) and ir.Patchify("p", ("i",), ("o",), patch_size=(2, 3)).grid(5, 7) == (2, 2)


def test_a_position_embedding_of_another_size_is_an_input_error():
    with pytest.raises(InputError, match=r"^pos_embed: the graph holds a 5-token position embedding, the image "
                                         r"gives 10 tokens"):
        ir.tensor_shapes(_graph(), image_size=(6, 6))


def test_op_shapes_list_inputs_and_outputs_per_op():
    rows = ir.op_shapes(_graph(), batch=2)
    assert [r[0].name for r in rows] == [o.name for o in _graph().ops]
    op, ins, outs = rows[6]
    assert op.name == "qk" and ins == ((2, H, 5, D // H),) * 2 and outs == ((2, H, 5, 5),)
    assert rows[10][1] == ((2, 5, D), (2, 5, D))       # proj: input and fused residual


def test_images_must_have_the_lowered_shape():
    ir.check_images(_graph(), (7, 1, 4, 4))
    with pytest.raises(InputError, match=r"^images: expected shape \[B, 1, 4, 4\], got \[2, 3, 4, 4\]$"):
        ir.check_images(_graph(), (2, 3, 4, 4))
    with pytest.raises(InputError, match=r"^images: the graph was lowered for 4x4 images, got 6x4; lower the "
                                         r"model again with image_size=\(6, 4\)$"):
        ir.check_images(_graph(), (2, 1, 6, 4))


def test_walk_dispatches_keeps_in_order_and_releases():
    g = _graph()
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    kept = []
    out = walk(g, NumpyOps(g), x, keep=lambda name, a: kept.append((name, a.shape)))
    shapes = ir.tensor_shapes(g, batch=2)
    assert kept == list(shapes.items())
    assert set(out) == {"logits"} and out["logits"].shape == (2, 3)
    assert last_reads(g)["x0"] == 10          # read by qkv and, last, by proj's residual
    # the same function written out
    ops = NumpyOps(g)
    p = ops.patchify(g.ops[0], x)
    x0 = ops.add_const(g.ops[3], ops.token_concat(g.ops[2], ops.linear(g.ops[1], p)))
    q, k, v = ops.split_heads(g.ops[5], ops.linear(g.ops[4], x0))
    a = ops.softmax(None, 0.5 * q @ np.swapaxes(k, -1, -2)) @ v
    y = ops.linear(g.ops[10], ops.merge_heads(None, a), x0)
    np.testing.assert_allclose(out["logits"], ops.linear(g.ops[12], y[:, 0]), rtol=1e-12)


def test_walk_names_a_missing_kernel():
    g = _graph()
    with pytest.raises(ir.GraphError, match=r"^patchify: op set object has no 'patchify' kernel"):
        walk(g, object(), np.zeros((1, 1, 4, 4)))


@pytest.mark.parametrize("ops, message", [
    ((ir.Softmax("a", ("images",), ("t",)), ir.Softmax("b", ("images",), ("t",))), "b: tensor 't' is produced twice"),
    ((ir.Softmax("a", ("nope",), ("t",)),), "a: reads 'nope' before it is produced"),
    ((ir.Softmax("a", ("images",), ("t",)), ir.Softmax("a", ("t",), ("u",))), "op name 'a' used twice"),
    ((ir.Linear("a", ("images",), ("t",)),), "a: missing params ['weight', 'bias']"),
    ((ir.Softmax("a", ("images",), ("t",)),), "graph output 'logits' is never produced"),
])
def test_malformed_graphs_are_rejected(ops, message):
    with pytest.raises(ir.GraphError) as err:
        ir.Graph(ops=ops, input="images", outputs=("t",) if "never" not in message else ("logits",), params={})
    assert str(err.value) == message


def test_op_arity_and_choices_are_checked():
    with pytest.raises(ir.GraphError, match="matmul takes 2..2 inputs, got 1"):
        ir.MatMul("m", ("a",), ("b",))
    with pytest.raises(ir.GraphError, match="activation 'relu' is not one of"):
        ir.Activation("a", ("x",), ("y",), function="relu")
    with pytest.raises(ir.GraphError, match="pool mode 'max'"):
        ir.Pool("p", ("x",), ("y",), mode="max")
    assert ir.Linear("l", ("x", "r"), ("y",)).residual == "r" and ir.Linear("l", ("x",), ("y",)).residual is None
