"""ALBEF / BLIP training pieces: EMA, the feature queue, momentum distillation, BERT masking."""

import torch
from torch import nn

from vlmhub.train.objectives import (FeatureQueue, ema_update, itc_distillation_loss, mask_tokens,
                                     mlm_distillation_loss, momentum_copy)


def test_ema_update_and_frozen_copy():
    model = nn.Linear(3, 2)
    twin = momentum_copy(model)
    assert not any(p.requires_grad for p in twin.parameters())
    old = twin.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema_update(model, twin, momentum=0.9)
    torch.testing.assert_close(twin.weight, 0.9 * old + 0.1 * model.weight)


def test_queue_is_fifo_and_wraps():
    queue = FeatureQueue(dim=2, size=5)
    for step in range(3):  # 3 batches of 2 into 5 rows: the last batch wraps to row 0
        queue.enqueue(torch.full((2, 2), float(step)), torch.full((2, 2), -float(step)))
    assert queue.image[:, 0].tolist() == [2.0, 0.0, 1.0, 1.0, 2.0] and int(queue.ptr) == 1
    assert torch.equal(queue.text, -queue.image)


def test_distillation_limits():
    torch.manual_seed(0)
    norm = lambda x: nn.functional.normalize(x, dim=-1)  # noqa: E731
    image, text = norm(torch.randn(4, 8)), norm(torch.randn(4, 8))
    queue = FeatureQueue(dim=8, size=6)
    # alpha = 0 and an empty-looking queue far away: plain InfoNCE over batch + queue negatives
    loss0 = itc_distillation_loss(image, text, image, text, queue, temp=0.07, alpha=0.0)
    sim_i2t = image @ torch.cat([text, queue.text]).t() / 0.07
    sim_t2i = text @ torch.cat([image, queue.image]).t() / 0.07
    target = torch.arange(4)
    expected = (nn.functional.cross_entropy(sim_i2t, target) + nn.functional.cross_entropy(sim_t2i, target)) / 2
    torch.testing.assert_close(loss0, expected)
    # alpha = 1 with identical online and momentum features: the targets are the model's own distributions, so the
    # loss is their entropy, the minimum of a soft cross-entropy
    loss1 = itc_distillation_loss(image, text, image, text, queue, temp=0.07, alpha=1.0)
    entropy = lambda s: -(s.softmax(-1) * s.log_softmax(-1)).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(loss1, (entropy(sim_i2t) + entropy(sim_t2i)) / 2)
    assert loss1 <= loss0


def test_bert_masking():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (64, 50), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS], [SEP]
    masked, labels = mask_tokens(ids, vocab_size=100, mask_token_id=4, special_ids=[0, 2, 3], generator=g)
    chosen = labels != -100
    assert not chosen[:, [0, -1]].any()  # specials never chosen
    assert 0.12 < chosen.float().mean() < 0.18
    assert torch.equal(labels[chosen], ids[chosen])
    share_masked = (masked[chosen] == 4).float().mean()
    assert 0.74 < share_masked < 0.86
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_mlm_distillation():
    logits, labels = torch.randn(2, 5, 10), torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    hard = mlm_distillation_loss(logits, labels)
    torch.testing.assert_close(hard, nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100]))
    mixed = mlm_distillation_loss(logits, labels, logits_m=logits.clone(), alpha=0.4)
    assert mixed != hard
