"""Vision-language pre-training objectives (BLIP-2 stage 1, after ALBEF/BLIP): pure loss functions on model outputs.

- ITC  image-text contrastive: similarity = max over the query features of image i with the [CLS] feature of
       text j, divided by a learnable temperature; symmetric cross-entropy (label smoothing 0.1, as LAVIS).
- ITM  image-text matching: each positive pair plus one hard negative text per image and one hard negative image
       per text, drawn in-batch with probability softmax(similarity) (the positive excluded); binary cross-entropy.
- ITG  image-grounded text generation: captioning with the first token replaced by [DEC] under the ITG mask
       (queries see only queries), label smoothing 0.1.

`blip2_stage1_losses(model, ...)` runs all three on a VlmhubBlip2ForImageTextRetrieval and sums them.
"""

import torch
from torch import nn

LABEL_SMOOTHING = 0.1
TEMPERATURE_RANGE = (0.001, 0.5)  # LAVIS clamps `temp` into this range before every step


def itc_similarities(image_feats: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor):
    """image_feats (B, Q, E), text_feat (B, E), both normalised -> (sim_i2t, sim_t2i), each (B, B), max over queries."""
    sim = torch.einsum("iqe,te->itq", image_feats, text_feat).amax(dim=-1)  # (images, texts)
    temp = temp.clamp(*TEMPERATURE_RANGE)
    return sim / temp, sim.t() / temp


def itc_loss(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
    """Symmetric InfoNCE; pair i is the match of row i."""
    target = torch.arange(len(sim_i2t), device=sim_i2t.device)
    ce = nn.functional.cross_entropy
    return (ce(sim_i2t, target, label_smoothing=label_smoothing) + ce(sim_t2i, target, label_smoothing=label_smoothing)) / 2


def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, generator: torch.Generator | None = None):
    """In-batch hard negatives: (negative text index per image, negative image index per text), each (B,).

    A negative is drawn with probability softmax(similarity) over the other items of the batch (BLIP/BLIP-2)."""
    if len(sim_i2t) < 2:
        raise ValueError("hard-negative mining needs a batch of at least 2 image-text pairs")
    with torch.no_grad():
        eye = torch.eye(len(sim_i2t), dtype=torch.bool, device=sim_i2t.device)
        weights_i2t = sim_i2t.float().softmax(dim=1).masked_fill(eye, 0) + 1e-8 * ~eye
        weights_t2i = sim_t2i.float().softmax(dim=1).masked_fill(eye, 0) + 1e-8 * ~eye
        neg_text = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)
        neg_image = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)
    return neg_text, neg_image


def itm_loss(model, image_embeds, input_ids, attention_mask, neg_text, neg_image) -> torch.Tensor:
    """Matching cross-entropy over B positives, B (negative image, text) and B (image, negative text) pairs."""
    images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
    ids = torch.cat([input_ids, input_ids, input_ids[neg_text]])
    mask = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
    logits = model.itm_logits(images, ids, mask)  # (3B, 2)
    B = len(input_ids)
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
    return nn.functional.cross_entropy(logits, labels)


def itg_loss(model, image_embeds, input_ids, attention_mask, decoder_start_token_id: int,
             label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
    """Captioning loss: ids with [DEC] first, predict token t+1 from tokens <= t and the queries; padding ignored."""
    ids = input_ids.clone()
    ids[:, 0] = decoder_start_token_id
    logits = model.itg_logits(image_embeds, ids, attention_mask)  # (B, T, V)
    labels = ids.masked_fill(attention_mask == 0, -100)[:, 1:]
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100,
                                       label_smoothing=label_smoothing)


def blip2_stage1_losses(model, pixel_values, input_ids, attention_mask, decoder_start_token_id: int,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """{"itc", "itm", "itg", "loss" (their sum)} for one batch of matching (image, text) pairs."""
    image_embeds, _, image_feats = model.get_image_features(pixel_values)
    _, text_feat = model.get_text_features(input_ids, attention_mask)
    sim_i2t, sim_t2i = itc_similarities(image_feats, text_feat, model.temp)
    losses = {"itc": itc_loss(sim_i2t, sim_t2i)}
    neg_text, neg_image = sample_hard_negatives(sim_i2t, sim_t2i, generator)
    losses["itm"] = itm_loss(model, image_embeds, input_ids, attention_mask, neg_text, neg_image)
    losses["itg"] = itg_loss(model, image_embeds, input_ids, attention_mask, decoder_start_token_id)
    losses["loss"] = losses["itc"] + losses["itm"] + losses["itg"]
    return losses


# --- ALBEF / BLIP: momentum encoders, feature queue, momentum distillation, masked language modelling --------------

DISTILLATION_ALPHA = 0.4  # weight of the momentum model's soft targets (ALBEF, BLIP)
MLM_PROBABILITY = 0.15


@torch.no_grad()
def ema_update(model: nn.Module, momentum_model: nn.Module, momentum: float = 0.995) -> None:
    """momentum_model <- momentum * momentum_model + (1 - momentum) * model, parameter by parameter (same names)."""
    params = dict(model.named_parameters())
    for name, p_m in momentum_model.named_parameters():
        p_m.mul_(momentum).add_(params[name].detach(), alpha=1 - momentum)


def momentum_copy(model: nn.Module) -> nn.Module:
    """A frozen copy to be updated with `ema_update` (ALBEF's momentum encoders)."""
    import copy

    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class FeatureQueue(nn.Module):
    """MoCo-style queues of the momentum model's normalised image and text features: (size, E) each, FIFO."""

    def __init__(self, dim: int, size: int = 57600):
        super().__init__()
        self.register_buffer("image", nn.functional.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("text", nn.functional.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor) -> None:
        """Overwrite the oldest rows with a batch (B, E); wraps around the end."""
        B, size = image_feat.shape[0], self.image.shape[0]
        if B > size:
            raise ValueError(f"a batch of {B} does not fit a queue of {size}")
        rows = (self.ptr + torch.arange(B, device=self.ptr.device)) % size
        self.image[rows] = image_feat.detach().to(self.image.dtype)
        self.text[rows] = text_feat.detach().to(self.text.dtype)
        self.ptr.copy_((self.ptr + B) % size)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits)); targets are distributions."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def itc_distillation_loss(image_feat, text_feat, image_feat_m, text_feat_m, queue: FeatureQueue, temp,
                          alpha: float = DISTILLATION_ALPHA) -> torch.Tensor:
    """ALBEF's ITC with a queue and momentum distillation. Features (B, E) normalised; the *_m ones from the momentum
    model. Targets: alpha * softmax(momentum similarities) + (1 - alpha) * one-hot on the positive."""
    all_text = torch.cat([text_feat_m, queue.text.clone()])  # (B + K, E)
    all_image = torch.cat([image_feat_m, queue.image.clone()])
    sim_i2t, sim_t2i = image_feat @ all_text.t() / temp, text_feat @ all_image.t() / temp
    with torch.no_grad():
        hard = torch.zeros_like(sim_i2t)
        hard[:, : len(image_feat)] = torch.eye(len(image_feat), device=hard.device)
        target_i2t = alpha * (image_feat_m @ all_text.t() / temp).softmax(dim=-1) + (1 - alpha) * hard
        target_t2i = alpha * (text_feat_m @ all_image.t() / temp).softmax(dim=-1) + (1 - alpha) * hard
    return (soft_cross_entropy(sim_i2t, target_i2t) + soft_cross_entropy(sim_t2i, target_t2i)) / 2


def mask_tokens(input_ids: torch.Tensor, vocab_size: int, mask_token_id: int, special_ids, *,
                probability: float = MLM_PROBABILITY, generator: torch.Generator | None = None):
    """BERT masking: pick `probability` of the non-special tokens; of those 80% -> [MASK], 10% -> random, 10% kept.
    Returns (masked ids, labels with -100 where nothing is predicted)."""
    ids, device = input_ids.clone(), input_ids.device
    draw = lambda: torch.rand(ids.shape, generator=generator).to(device)  # noqa: E731
    special = torch.isin(ids, torch.tensor(list(special_ids), device=device))
    chosen = (draw() < probability) & ~special
    labels = input_ids.masked_fill(~chosen, -100)
    to_mask = chosen & (draw() < 0.8)
    to_random = chosen & ~to_mask & (draw() < 0.5)
    ids[to_mask] = mask_token_id
    ids[to_random] = torch.randint(vocab_size, ids.shape, generator=generator).to(device)[to_random]
    return ids, labels


def mlm_distillation_loss(logits, labels, logits_m=None, alpha: float = DISTILLATION_ALPHA) -> torch.Tensor:
    """MLM cross-entropy at the masked positions, mixed with the momentum model's soft predictions (ALBEF):
    (1 - alpha) * CE(labels) + alpha * soft CE(softmax(logits_m))."""
    picked = labels != -100
    hard = nn.functional.cross_entropy(logits[picked], labels[picked])
    if logits_m is None or alpha == 0:
        return hard
    return (1 - alpha) * hard + alpha * soft_cross_entropy(logits[picked], logits_m[picked].softmax(dim=-1))
