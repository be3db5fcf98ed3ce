"""A BERT/RoBERTa encoder with its pretraining and classification heads, in plain PyTorch.

Module and parameter names mirror Hugging Face's BERT/RoBERTa layout (embeddings.word_embeddings,
encoder.layer.N.attention.self.query, ..., lm_head.dense) with the same shapes, so exporting to
`RobertaForMaskedLM` / `BertForPreTraining` is a renaming of keys, never a reshaping.

Positions are learned absolute embeddings added to the input (BERT/RoBERTa), or with
`positions: rope` rotary embeddings: no position table, queries and keys rotated in every layer.

The MLM head runs only on the masked positions (~15% of tokens): at a small hidden size the
vocabulary projection is most of a step's FLOPs, so projecting every position wastes most of it.
On a CPU the position-wise layers (projections, feed-forward, LayerNorms) also skip the padding:
they run on the real tokens' rows alone, and only attention sees the padded [B, L] layout. Packed
whole sentences leave about a quarter of a 64-token sequence as padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import ModelConfig
from harness.data.masking import IGNORE


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, config.hidden, padding_idx=pad_id)
        # rope puts positions into attention instead: no table, so parameter counts stay honest
        self.position_embeddings = None if config.rope else nn.Embedding(config.max_len, config.hidden)
        self.token_type_embeddings = nn.Embedding(config.token_types, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:  # added in the same order as before rope existed
            x = x + self.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE, Su et al. 2021): each head's dimensions i and i + head_dim/2
    form a pair, rotated at position m by the angle m * base^(-2i/head_dim). A query at m and a key at
    n then score q·R(n-m)·k: only their offset counts. The cos/sin tables are computed once up to
    max_len and kept as non-persistent buffers (they move with the model, but are not weights)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [head_dim/2]
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq  # [max_len, head_dim/2]
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[:length], self.sin[:length]  # [L, head_dim/2] each


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, L, head_dim] rotated pair by pair; cos, sin [L, head_dim/2]. In fp32, back in x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)  # [B, heads, L, head_dim/2] each: the pairs (x1[i], x2[i])
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


Rotation = tuple[torch.Tensor, torch.Tensor] | None  # rope's (cos, sin), each [L, head_dim/2]; None: learned


class RealRows:
    """Where the real tokens of a padded batch are: `take` keeps their rows ([B, L, D] -> [N, D]),
    `put` lays rows back out ([N, D] -> [B, L, D], zeros at the padding)."""

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.length = attention_mask.shape
        self.index = attention_mask.reshape(-1).nonzero().squeeze(1)  # [N] flat positions b * L + l

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def put(self, rows: torch.Tensor) -> torch.Tensor:
        padded = rows.new_zeros(self.batch * self.length, rows.shape[-1])
        return padded.index_copy(0, self.index, rows).view(self.batch, self.length, -1)

    @staticmethod
    def of(attention_mask: torch.Tensor) -> RealRows | None:
        """None where skipping the padding cannot pay: no padding, or a GPU (finding the rows would
        wait for the device at every forward)."""
        if attention_mask.device.type != "cpu" or bool(attention_mask.all()):
            return None
        return RealRows(attention_mask)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.dropout_p = config.attention_dropout
        self.use_sdpa = True  # False: the explicit softmax(QK^T/sqrt(d))V, kept to measure SDPA's worth

    def forward(
        self, x: torch.Tensor, attend: torch.Tensor, rotation: Rotation = None, rows: RealRows | None = None
    ) -> torch.Tensor:
        """x [B, L, H], or the real tokens' rows [N, H] with `rows` (the output alike)."""
        hidden = x.shape[-1]
        head_dim = hidden // self.heads
        batch, length = (rows.batch, rows.length) if rows is not None else x.shape[:2]

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # [B, L, H] (or [N, H]) -> [B, heads, L, head_dim]
            t = rows.put(t) if rows is not None else t
            return t.view(batch, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        if rotation is not None:  # rope: positions enter here, in both attention paths below
            q, k = rotate(q, *rotation), rotate(k, *rotation)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=dropout_p)
        else:
            scores = (q @ k.transpose(-2, -1)) / head_dim**0.5  # [B, heads, L, L]
            scores = scores.masked_fill(~attend, torch.finfo(scores.dtype).min)
            out = F.dropout(scores.softmax(-1), dropout_p, self.training) @ v
        out = out.transpose(1, 2).reshape(batch, length, hidden)
        return rows.take(out) if rows is not None else out


class AttentionOutput(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = SelfAttention(config)  # HF's key name 'attention.self.*'
        self.output = AttentionOutput(config)


class Intermediate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.ffn)


class Output(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.ffn, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)


class Layer(nn.Module):
    """One transformer block. post-norm (BERT): x = LN(x + f(x)); pre-norm: x = x + f(LN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def forward(
        self, x: torch.Tensor, attend: torch.Tensor, rotation: Rotation = None, rows: RealRows | None = None
    ) -> torch.Tensor:
        """x [B, L, H], or the real tokens' rows [N, H] with `rows`: every step but attention is per position."""
        attn, ffn_in, ffn_out = self.attention.output, self.intermediate, self.output
        if self.pre_norm:
            x = x + attn.dropout(attn.dense(self.attention.self(attn.LayerNorm(x), attend, rotation, rows)))
            return x + ffn_out.dropout(ffn_out.dense(F.gelu(ffn_in.dense(ffn_out.LayerNorm(x)))))
        x = attn.LayerNorm(x + attn.dropout(attn.dense(self.attention.self(x, attend, rotation, rows))))
        return ffn_out.LayerNorm(x + ffn_out.dropout(ffn_out.dense(F.gelu(ffn_in.dense(x)))))


class LayerStack(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.layers))


class Encoder(nn.Module):
    """input ids [B, L] -> hidden states [B, L, hidden]."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config, vocab_size, pad_id)
        self.encoder = LayerStack(config)
        self.rotary = Rotary(config.hidden // config.heads, config.max_len) if config.rope else None
        # pre-norm stacks need a last LayerNorm; post-norm outputs are already normalised
        self.final_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps) if config.norm == "pre" else None
        self.skip_padding = True  # False: every layer on the padded batch, kept to measure what skipping is worth

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states [B, L, H]; zeros at the padding when the layers skipped it."""
        attend = attention_mask[:, None, None, :]  # [B, 1, 1, L]: every query sees the real keys
        x = self.embeddings(input_ids, token_type_ids)
        rotation = self.rotary(input_ids.shape[1]) if self.rotary is not None else None
        rows = RealRows.of(attention_mask) if self.skip_padding else None
        if rows is not None:
            x = rows.take(x)  # [N, H]: the layers below run on the real tokens alone
        for layer in self.encoder.layer:
            x = layer(x, attend, rotation, rows)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return rows.put(x) if rows is not None else x


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary projection tied to the word embeddings."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.hidden)
        self.layer_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation. With the default N(0, 1) embedding init tied to the output layer,
    logits are large, softmax underflows to denormals and CPU matmuls slow ~20x (PERF-NOTES)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass
class PretrainLosses:
    mlm_loss_sum: torch.Tensor  # summed over masked positions
    masked: int
    mlm_correct: torch.Tensor  # a 0-d count, left on the device: reading it every step would sync a GPU
    nsp_loss_sum: torch.Tensor | None  # summed over pair sequences
    pairs: int


class PretrainingModel(nn.Module):
    """Encoder + MLM head (+ NSP head). Returns summed losses so gradient accumulation over
    micro-batches can normalise by the whole step's counts."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, nsp: bool):
        super().__init__()
        self.roberta = Encoder(config, vocab_size, pad_id)
        self.lm_head = LMHead(config, vocab_size)
        # BERT's NSP reads the pooled first token: tanh(dense(h_cls)), then a 2-way classifier
        self.pooler = nn.Linear(config.hidden, config.hidden) if nsp else None
        self.nsp_head = nn.Linear(config.hidden, 2) if nsp else None
        # True: project every position to the vocabulary and select the masked ones afterwards, as
        # Hugging Face's RobertaForMaskedLM does; kept to measure what projecting only them is worth
        self.project_all_positions = False
        init_weights(self, config.init_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_labels: torch.Tensor,
        nsp_labels: torch.Tensor | None = None,
    ) -> PretrainLosses:
        hidden = self.roberta(input_ids, token_type_ids, attention_mask)  # [B, L, H]
        predicted = mlm_labels != IGNORE
        targets = mlm_labels[predicted]  # [M]
        word_embeddings = self.roberta.embeddings.word_embeddings.weight
        if self.project_all_positions:
            logits = self.lm_head(hidden, word_embeddings)[predicted]  # [B, L, V] -> [M, V]
        else:
            logits = self.lm_head(hidden[predicted], word_embeddings)  # [M, V]
        mlm_loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        # accuracy is an evaluation figure: skip the argmax over [M, V] while training
        correct = (logits.detach().argmax(-1) == targets).sum() if not self.training else targets.new_zeros(())
        nsp_loss, pairs = None, 0
        if self.nsp_head is not None and nsp_labels is not None:
            has_pair = nsp_labels >= 0
            pairs = int(has_pair.sum())
            nsp_logits = self.nsp_head(torch.tanh(self.pooler(hidden[has_pair, 0])))  # first token: <cls>
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels[has_pair], reduction="sum")
        return PretrainLosses(mlm_loss, int(targets.numel()), correct, nsp_loss, pairs)


def set_fast_path(
    model: nn.Module, masked_only_logits: bool = True, sdpa: bool = True, skip_padding: bool = True
) -> None:
    """Switch the model's fast paths on or off (benchmarks and equivalence tests); both give the same
    loss up to float rounding."""
    for module in model.modules():
        if isinstance(module, PretrainingModel):
            module.project_all_positions = not masked_only_logits
        if isinstance(module, SelfAttention):
            module.use_sdpa = sdpa
        if isinstance(module, Encoder):
            module.skip_padding = skip_padding


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict without the `_orig_mod.` prefix torch.compile adds, on the CPU, contiguous: what
    checkpoints hold, so a compiled model's weights load into an uncompiled one."""
    return {
        key.replace("_orig_mod.", ""): value.detach().cpu().contiguous() for key, value in model.state_dict().items()
    }


class SequenceClassifier(nn.Module):
    """A pretrained encoder with RoBERTa's classification head (dense, tanh, output) on a pooled
    vector: the first token's hidden state (`first`, RoBERTa's choice), or the mean of the hidden
    states of the real tokens (`mean`; padding never counts, so extra padding changes nothing)."""

    def __init__(self, encoder: Encoder, num_labels: int, dropout: float, pooling: str = "first"):
        super().__init__()
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be first or mean, not {pooling!r}")
        hidden = encoder.config.hidden
        self.roberta = encoder
        self.pooling = pooling
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)
        for layer in (self.dense, self.out_proj):
            nn.init.normal_(layer.weight, std=encoder.config.init_std)
            nn.init.zeros_(layer.bias)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.roberta(input_ids, token_type_ids, attention_mask)  # [B, L, H]
        if self.pooling == "mean":
            real = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]: 1 at real tokens
            pooled = (hidden * real).sum(1) / real.sum(1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))


class SpanExtractor(nn.Module):
    """A pretrained encoder with a start/end head for extractive question answering (SQuAD): one linear
    layer giving every token a start and an end logit, as BERT's and RoBERTa's question-answering
    heads do (Hugging Face's name `qa_outputs`). Padding gets a logit far below any real one."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.roberta = encoder
        self.qa_outputs = nn.Linear(encoder.config.hidden, 2)
        nn.init.normal_(self.qa_outputs.weight, std=encoder.config.init_std)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.roberta(input_ids, token_type_ids, attention_mask)  # [B, L, H]
        logits = self.qa_outputs(hidden).float().masked_fill(~attention_mask.unsqueeze(-1), -1e4)  # [B, L, 2]
        return logits[..., 0], logits[..., 1]
