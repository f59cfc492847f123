import torch

from ehrseq.data.masking import IGNORE_INDEX, mask_codes

MASK, NUM_SPECIAL, VOCAB = 3, 5, 200


def test_masking_follows_the_80_10_10_rule_on_code_tokens_only():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(NUM_SPECIAL, VOCAB, (400, 250), generator=g)
    codes[:, 0] = 1  # CLS
    codes[:, 10::11] = 2  # SEP
    codes[:, 200:] = 0  # PAD
    inputs, labels = mask_codes(codes, mask_id=MASK, num_special=NUM_SPECIAL, vocab_size=VOCAB,
                                generator=torch.Generator().manual_seed(1))
    real = codes >= NUM_SPECIAL
    chosen = labels != IGNORE_INDEX
    assert not chosen[~real].any()  # specials and padding never chosen
    assert torch.equal(labels[chosen], codes[chosen])
    assert torch.equal(inputs[~chosen], codes[~chosen])  # unchosen tokens untouched
    assert abs(chosen.sum() / real.sum() - 0.15) < 0.005
    n = chosen.sum()
    to_mask = (inputs[chosen] == MASK).sum() / n
    kept = (inputs[chosen] == codes[chosen]).sum() / n
    replaced = ((inputs[chosen] != MASK) & (inputs[chosen] != codes[chosen])).sum() / n
    assert abs(to_mask - 0.8) < 0.01 and abs(replaced - 0.1) < 0.01 and abs(kept - 0.1) < 0.01 + 1 / VOCAB
    assert (inputs[chosen] >= NUM_SPECIAL).logical_or(inputs[chosen] == MASK).all()


def test_masks_are_a_function_of_the_generator_seed():
    codes = torch.randint(NUM_SPECIAL, VOCAB, (8, 30))
    def draw(seed):
        return mask_codes(codes, mask_id=MASK, num_special=NUM_SPECIAL, vocab_size=VOCAB,
                          generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(draw(5), draw(5), strict=True))
    assert not torch.equal(draw(5)[1], draw(6)[1])
