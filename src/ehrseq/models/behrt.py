"""BEHRT: a BERT encoder over patient histories (Li et al., 2020).

Each token is a medical code; its embedding is the sum of code, age (months), visit
position and segment embeddings, plus a linear projection of two continuous time features
(`time_features`: age in years / 100 and log1p(months since the previous visit)). The visit position is
`config.positions`: `learned`, BEHRT's absolute embedding table; `rope`, rotary embeddings of the visit index
applied to queries and keys in every layer (no table), so attention sees how many visits apart two tokens are,
the same at every offset, instead of learning "Q right after P" separately for each pair of positions; `time`,
the same rotation by months since the first visit (the time resolution the batches carry). A month
bucket is one of 1,441 independent vectors that each must be learned; the continuous age makes
"older" one direction from the first step, which a few thousand patients cannot otherwise teach.
Attention is written with explicit query/key/value/output
`nn.Linear` layers and `F.scaled_dot_product_attention`, so that LoRA (peft) can target
those layers; `nn.MultiheadAttention` hides them behind a fused kernel whose `out_proj.forward`
is never called.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ehrseq.windows import SEQ_LENS

NUM_TIME_FEATURES = 2  # continuous inputs per token: see time_features
POSITIONS = ("learned", "rope", "time")  # how attention knows where a token's visit is (module docstring)
ROPE_BASE = 10000.0  # rotary wavelengths from 2*pi to ~2*pi*ROPE_BASE visits (or months)

@dataclass
class BEHRTConfig:
    vocab_size: int
    hidden_size: int = 288
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 512
    max_age: int = 1441  # age buckets: months 0..1440 (120 years)
    max_position: int = 256  # visit index buckets (learned positions): position_buckets(max_seq_len)
    num_segments: int = 3  # 0/1 alternate per visit; 2 marks static codes (ehrseq.data.tokenize.STATIC_SEGMENT)
    dropout: float = 0.1  # embeddings and residual branches
    attention_dropout: float = 0.0  # on attention weights; > 0 sends CPU SDPA to a ~10x slower kernel
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    positions: str = "learned"  # learned | rope | time (POSITIONS); the paper's BEHRT: learned
    pooling: str = "cls"  # what a prediction head reads: cls, [CLS]'s state; mean, the mean over real tokens

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling is cls or mean, not {self.pooling!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; choose one of {list(POSITIONS)}")
        if self.positions != "learned" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"positions {self.positions!r} rotates pairs of head dimensions: hidden_size "
                             f"{self.hidden_size} / num_heads {self.num_heads} must be even")

    # Presets: the user's three tiers (~0.5M / ~3M / ~15M parameters at 1,000 codes), with rotary positions (they
    # find an order across consecutive visits the learned table does not), and the paper's, with its table;
    # SEQ_LENS says which window each is meant for.
    @classmethod
    def small(cls, vocab_size: int, **kw) -> BEHRTConfig:
        """Laptop tier (M1, 16 GB): trains on CPU in minutes; meant for up to 512 tokens per patient."""
        return cls(vocab_size, **{"hidden_size": 96, "num_layers": 3, "num_heads": 4,
                                  "intermediate_size": 384, "positions": "rope", **kw})

    @classmethod
    def medium(cls, vocab_size: int, **kw) -> BEHRTConfig:
        """A pod or a patient laptop; meant for up to 1,024 tokens per patient."""
        return cls(vocab_size, **{"hidden_size": 192, "num_layers": 6, "num_heads": 6,
                                  "intermediate_size": 768, "positions": "rope", **kw})

    @classmethod
    def large(cls, vocab_size: int, **kw) -> BEHRTConfig:
        """Pod tier (A40/H100); meant for up to 2,048 tokens per patient (4,096 at most)."""
        return cls(vocab_size, **{"hidden_size": 384, "num_layers": 8, "num_heads": 6,
                                  "intermediate_size": 1536, "positions": "rope", **kw})

    @classmethod
    def paper(cls, vocab_size: int, **kw) -> BEHRTConfig:
        """The original BEHRT: hidden 288, 6 layers, 12 heads, intermediate 512."""
        return cls(vocab_size, **{"hidden_size": 288, "num_layers": 6, "num_heads": 12,
                                  "intermediate_size": 512, "attention_dropout": 0.1, **kw})

    @classmethod
    def preset(cls, size: str, vocab_size: int, max_seq_len: int | None = None, **kw) -> BEHRTConfig:
        """The size's preset; with `max_seq_len`, its visit position table sized for that many tokens (at most
        SEQ_LENS[size][1])."""
        presets = {"small": cls.small, "medium": cls.medium, "large": cls.large, "paper": cls.paper}
        if size not in presets:
            raise ValueError(f"unknown BEHRT size {size!r}; choose one of {sorted(presets)}")
        if max_seq_len is not None:
            if max_seq_len > SEQ_LENS[size][1]:
                raise ValueError(f"BEHRT {size} is sized for up to {SEQ_LENS[size][1]:,} tokens, not {max_seq_len:,}")
            kw = {"max_position": position_buckets(max_seq_len), **kw}
        return presets[size](vocab_size, **kw)


def position_buckets(max_seq_len: int) -> int:
    """Visit indices a window of `max_seq_len` tokens can hold: [CLS], then at least a code and [SEP] per visit
    (256 at least, the table of every model trained with up to 512 tokens)."""
    return max(256, max_seq_len // 2)


class BEHRTEmbeddings(nn.Module):
    def __init__(self, config: BEHRTConfig) -> None:
        super().__init__()
        self.code = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_id)
        self.age = nn.Embedding(config.max_age, config.hidden_size)
        # rope / time: positions enter attention as rotations instead (BEHRT.forward)
        self.position = nn.Embedding(config.max_position, config.hidden_size) if config.positions == "learned" \
            else None
        self.segment = nn.Embedding(config.num_segments, config.hidden_size)
        self.time = nn.Linear(NUM_TIME_FEATURES, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.max_age = config.max_age
        self.max_position = config.max_position

    def forward(self, codes, ages, segments, positions):  # each (B, T) long
        ages = ages.clamp(0, self.max_age - 1)
        continuous = self.time(time_features(ages, positions))  # (B, T, C)
        x = self.code(codes) + self.age(ages) + self.segment(segments) + continuous
        if self.position is not None:
            x = x + self.position(positions.clamp(0, self.max_position - 1))
        return self.dropout(self.norm(x))  # (B, T, C)


def time_features(ages: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T) month ages and visit indices -> (B, T, 2) float: [age in years / 100, log1p(months since the
    previous visit)] (0 for the first visit, [CLS] and static codes, which sit at position 0).

    Derived from what every batch carries: every token of a visit has the visit's age, so a visit's age is the
    largest age at its position. Two scatter/gather ops on (B, T): no cost next to one attention layer. Visit
    indices count from [CLS]'s (0 in every batch), so adding a constant to all of them changes nothing here:
    with rotary positions the whole model sees only differences of visit indices.
    """
    B, T = ages.shape
    index = (positions - positions[:, :1]).clamp(0, T - 1)  # a visit index never exceeds its first token's index
    visit_age = torch.zeros_like(ages).scatter_reduce(1, index, ages, "amax")  # (B, T): age of visit p at [:, p]
    previous = visit_age.gather(1, (index - 1).clamp(min=0))  # (B, T): the previous visit's age
    gap = torch.where(index > 0, ages - previous, 0).clamp(min=0)  # (B, T) months
    return torch.stack([ages.float() / 1200.0, torch.log1p(gap.float())], dim=-1)


def rotary_angles(config: BEHRTConfig, ages: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
    """(B, T) month ages and visit indices -> (B, 1, T, D/2) rotation angles per head-dimension pair, D the head
    size; None for learned positions. rope: the visit index; time: months since the first kept visit (the
    [CLS] token carries its age), so two visits a year apart are one rotation apart wherever they fall."""
    if config.positions == "learned":
        return None
    where = positions if config.positions == "rope" else ages - ages[:, :1]  # (B, T)
    D = config.hidden_size // config.num_heads
    inv_freq = ROPE_BASE ** -(torch.arange(0, D, 2, device=where.device, dtype=torch.float32) / D)  # (D/2,)
    return where.float()[:, None, :, None] * inv_freq  # (B, 1, T, D/2)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) with each pair (i, i + D/2) turned by its angle; cos, sin (B, 1, T, D/2). A query and a key
    rotated this way have a dot product that depends on their angles' difference only (RoFormer, Su et al.)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: BEHRTConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.num_heads = config.num_heads
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C)
        self.value = nn.Linear(C, C)
        self.output = nn.Linear(C, C)
        self.dropout_p = config.attention_dropout

    def forward(self, x, attn_mask, rotary=None):  # x (B, T, C); attn_mask (B, 1, 1, T) bool, True = attend
        B, T, C = x.shape  # rotary: None, or (cos, sin) each (B, 1, T, C/H/2)
        H = self.num_heads

        def heads(t):  # (B, T, C) -> (B, H, T, C/H)
            return t.view(B, T, H, C // H).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if rotary is not None:
            cos, sin = (r.to(q.dtype) for r in rotary)  # bf16/fp16 runs keep q, k and v in one dtype for SDPA
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.output(y)


class FeedForward(nn.Module):
    def __init__(self, config: BEHRTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Post-LayerNorm transformer block, as in BERT and BEHRT."""

    def __init__(self, config: BEHRTConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask, rotary=None):
        x = self.norm1(x + self.dropout(self.attention(x, attn_mask, rotary)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class BEHRT(nn.Module):
    """The encoder: `(codes, ages, segments, positions, attention_mask)` -> hidden states (B, T, C)."""

    def __init__(self, config: BEHRTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BEHRTEmbeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.apply(init_weights)

    def forward(self, codes, ages, segments, positions, attention_mask):  # (B, T) each
        attn_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        angles = rotary_angles(self.config, ages, positions)  # (B, 1, T, C/H/2), once for every layer
        rotary = None if angles is None else (angles.cos(), angles.sin())
        x = self.embeddings(codes, ages, segments, positions)
        for layer in self.layers:
            x = layer(x, attn_mask, rotary)
        return x  # (B, T, C)


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder shares its weights with the code embedding."""

    def __init__(self, config: BEHRTConfig, code_embedding: nn.Embedding) -> None:
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.code_embedding = code_embedding
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h):  # (N, C) -> (N, V)
        h = self.norm(F.gelu(self.transform(h)))
        return F.linear(h, self.code_embedding.weight, self.bias)


class BEHRTForMLM(nn.Module):
    """BEHRT with a masked-language-model head.

    The vocabulary projection runs only on masked positions (about 15% of tokens), not on
    every token: the same loss for a fraction of the largest matmul.
    """

    def __init__(self, config: BEHRTConfig) -> None:
        super().__init__()
        self.config = config
        self.behrt = BEHRT(config)
        self.head = MLMHead(config, self.behrt.embeddings.code)
        init_weights(self.head.transform)

    def forward(self, codes, ages, segments, positions, attention_mask, labels):
        """labels (B, T): target code at masked positions, -100 elsewhere. Returns (loss, logits (N, V))."""
        h = self.behrt(codes, ages, segments, positions, attention_mask)  # (B, T, C)
        selected = labels != -100  # (B, T)
        logits = self.head(h[selected])  # (N, V)
        # no masked token (a short batch share under DDP): a zero loss that still reaches every parameter, head
        # included, so every rank reduces the same gradients
        loss = F.cross_entropy(logits, labels[selected]) if logits.numel() else (h.sum() + logits.sum()) * 0.0
        return loss, logits


def init_weights(module: nn.Module) -> None:
    """BERT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; shared (tied) tensors counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
