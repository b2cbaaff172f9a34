"""The reference MeLU meta-step written the two ways a PyTorch user would; prints one JSON line.

    python benchmarks/torch_reference.py --style loop   # per-task loop, torch.autograd.grad(create_graph=True)
    python benchmarks/torch_reference.py --style func   # torch.func: functional_call + grad + vmap

Same workload and flags as ``meta_step.py`` (MAML, adapt all or head, first or second order, Adam outer step).
Needs the ``bench`` extra (``pip install torch``). Threads = the process's core count.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
except ModuleNotFoundError:
    sys.exit("benchmarks/torch_reference.py needs PyTorch: pip install torch==2.13.0 (or the bench extra)")
from torch import nn  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402

USER_FIELDS = {"user_gender": 2, "user_age": 7, "user_occupation": 21, "user_zip": 100}
ITEM_FIELDS = {"item_year": 8}
GENRES = 19


class MeLU(nn.Module):
    """Embeddings of item id, item year, 4 user fields, genres (bias-free dense) -> MLP -> 1 (as jaxrec's MeLU)."""

    def __init__(self, item_vocab, embed, hidden):
        super().__init__()
        vocab = {"item": item_vocab, **ITEM_FIELDS, **USER_FIELDS}
        self.keys = sorted(vocab)
        self.embeds = nn.ModuleDict({k: nn.Embedding(v, embed) for k, v in vocab.items()})
        self.genres = nn.Linear(GENRES, embed, bias=False)
        layers, width = [], embed * (len(vocab) + 1)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, rows):
        x = torch.cat([self.embeds[k](rows[k]) for k in self.keys] + [self.genres(rows["item_genres"])], -1)
        return self.head(x).squeeze(-1)


def make_batch(args, rng):
    def side(n):
        rows = {"item": rng.integers(0, args.item_vocab, (args.tasks, n))}
        rows |= {k: rng.integers(0, v, (args.tasks, n)) for k, v in ITEM_FIELDS.items()}
        rows |= {k: np.repeat(rng.integers(0, v, (args.tasks, 1)), n, 1) for k, v in USER_FIELDS.items()}
        rows = {k: torch.as_tensor(v, dtype=torch.long) for k, v in rows.items()}
        rows["item_genres"] = torch.as_tensor(rng.random((args.tasks, n, GENRES)) < 0.2, dtype=torch.float32)
        rows["rating"] = torch.as_tensor(rng.integers(1, 6, (args.tasks, n)), dtype=torch.float32)
        return rows

    return side(args.support), side(args.query)


def adapted_names(model, adapt):
    return [n for n, _ in model.named_parameters() if adapt == "all" or n.startswith("head.")]


def loop_step(model, opt, support, query, args, names):
    """learn2learn / MeLU style: per task, K steps of autograd.grad(create_graph=second order), then query loss."""
    opt.zero_grad()
    params = dict(model.named_parameters())
    total = 0.0
    for t in range(args.tasks):
        s = {k: v[t] for k, v in support.items()}
        q = {k: v[t] for k, v in query.items()}
        fast = dict(params)
        for _ in range(args.inner_steps):
            loss = torch.mean((functional_call(model, fast, (s,)) - s["rating"]) ** 2)
            grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=args.order == "second")
            for n, g in zip(names, grads, strict=True):
                fast[n] = fast[n] - args.inner_lr * g
        q_loss = torch.mean((functional_call(model, fast, (q,)) - q["rating"]) ** 2) / args.tasks
        q_loss.backward()
        total += float(q_loss.detach())
    opt.step()
    return total


def func_step(model, opt, support, query, args, names):
    """torch.func: grad of a vmapped per-task query loss after K functional inner steps."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def inner_loss(moving, fixed, rows):
        return torch.mean((functional_call(model, {**fixed, **moving}, (rows,)) - rows["rating"]) ** 2)

    def task_loss(params, s, q):
        moving = {n: params[n] for n in names}
        fixed = {n: p for n, p in params.items() if n not in moving}
        for _ in range(args.inner_steps):
            g = grad(inner_loss)(moving, fixed, s)
            if args.order == "first":
                g = {n: v.detach() for n, v in g.items()}
            moving = {n: moving[n] - args.inner_lr * g[n] for n in names}
        return inner_loss(moving, fixed, q)

    def meta_loss(params):
        return torch.mean(vmap(task_loss, in_dims=(None, 0, 0))(params, support, query))

    loss, grads = torch.func.grad_and_value(meta_loss)(params)[::-1]
    for n, p in model.named_parameters():
        p.grad = grads[n]
    opt.step()
    return float(loss)


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--style", choices=["loop", "func"], default="loop")
    args = p.parse_args(argv)
    if args.algorithm != "maml":
        raise SystemExit("torch_reference implements MAML only (--algorithm maml)")
    torch.set_num_threads(common.threads())
    torch.manual_seed(args.seed)
    model = MeLU(args.item_vocab, args.embed, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    support, query = make_batch(args, np.random.default_rng(args.seed))
    names = adapted_names(model, args.adapt)
    step = loop_step if args.style == "loop" else func_step
    times, loss = [], float("nan")
    t0 = time.perf_counter()
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = step(model, opt, support, query, args, names)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
        elif i == 0:
            first_s = time.perf_counter() - t0
    step_ms = common.median_ms(times)
    record = common.base_record(args, f"torch_{args.style}")
    record.update(
        step_ms=step_ms,
        step_ms_all=[1e3 * t for t in times],
        tasks_per_s=args.tasks / (step_ms / 1e3),
        compile_s=0.0,
        first_step_s=first_s if args.warmup else None,
        loss=loss,
        params=sum(p.numel() for p in model.parameters()),
        device="cpu",
        threads=torch.get_num_threads(),
        versions={"torch": torch.__version__},
    )
    common.emit(record)


if __name__ == "__main__":
    main()
