"""bench/peers/gpt_torch.py -- the char-level GPT of bench/bench_gpt.lua in PyTorch eager.

Same model as sn.models.LM{vocab_size=65, d=128, layers=4, heads=4, context=64,
positions="learned", bias=false}: learned positions, pre-norm blocks (LayerNorm, fused QKV,
causal attention, GELU MLP of 4d), final LayerNorm, tied output head.
Batch 12, AdamW. Prints `train_tokens_per_s N` (median of samples of timed steps), or
`skip: ...` when torch cannot be imported. Run it through run_gpt.sh.
"""
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"skip: import torch failed ({e})")
    sys.exit(0)

V, D, L, H, T, B = 65, 128, 4, 4, 64, 12
THREADS, WARMUP, SAMPLES, STEPS = 2, 5, 7, 10


def causal_attention(q, k, v):
    """q, k, v (B,H,T,Dh): the fused kernel where torch has it (>= 2.0), else nanoGPT's
    explicit masked softmax (what Debian 12's torch 1.13 runs)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return att.softmax(-1) @ v


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.fc = nn.Linear(D, 4 * D, bias=False)
        self.out = nn.Linear(4 * D, D, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, H, D // H).permute(2, 0, 3, 1, 4)
        y = causal_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln = nn.LayerNorm(D)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.t()


def main():
    torch.manual_seed(1)
    torch.set_num_threads(THREADS)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        loss.backward()
        opt.step()

    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(SAMPLES):
        t0 = time.perf_counter()
        for _ in range(STEPS):
            step()
        times.append((time.perf_counter() - t0) / STEPS)
    times.sort()
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"train_tokens_per_s {B * T / times[len(times) // 2]:.1f}")


if __name__ == "__main__":
    main()
