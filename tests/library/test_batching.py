import torch

from ehrseq.data.batching import EpochOrder

from support.reference_batches import token_arrays
from support.reference_histories import EncodedPatient


def test_epoch_order_is_deterministic_disjoint_and_groups_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 128, (1000,), generator=g).tolist()
    order = EpochOrder(lengths, batch_size=32, seed=7)
    assert len(order) == 31  # 1000 // 32: one pool (50 batches' worth) here, last partial batch dropped
    batches = [order.batch_indices(0, i) for i in range(len(order))]
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 31 * 32
    again = EpochOrder(lengths, batch_size=32, seed=7)
    assert [again.batch_indices(0, i) for i in range(len(order))] == batches  # no hidden state
    assert order.batch_indices(1, 0) != batches[0]  # a new shuffle each epoch
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 20  # grouped by length: little padding (random batches spread over ~115)


def test_collate_pads_to_the_longest_in_the_batch():
    a = EncodedPatient(1, [1, 7, 2], [0, 5, 5], [0, 0, 0], [0, 0, 0])
    b = EncodedPatient(2, [1, 8, 9, 2, 6, 2], [0, 5, 5, 5, 9, 9], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1])
    batch = token_arrays([a, b]).collate([0, 1])
    assert batch.codes.shape == (2, 6)
    assert batch.codes[0].tolist() == [1, 7, 2, 0, 0, 0]
    assert batch.attention_mask.sum(1).tolist() == [3, 6]
    assert batch.subject_ids.tolist() == [1, 2] and batch.num_tokens == 9
