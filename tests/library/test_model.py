import pytest
import torch

from ehrseq.models import BEHRT, BEHRTConfig, BEHRTForMLM, count_parameters
from ehrseq.models.behrt import time_features
from ehrseq.tasks.mlm import MLMTask
from ehrseq.training.trainer import Callback, TrainConfig, Trainer

from support.reference_batches import collate, token_arrays
from support.reference_histories import build_vocabulary, encode_patient
from support.reference_splits import load_dataset, patients_by_split

PRESET_PARAMS = {"small": 0.5e6, "medium": 3e6, "large": 15e6}


@pytest.mark.parametrize("size", ["small", "medium", "large", "paper"])
def test_presets_give_hidden_states_of_the_documented_shape(size):
    config = BEHRTConfig.preset(size, vocab_size=1000)
    model = BEHRT(config).eval()
    B, T = 3, 17
    codes = torch.randint(5, 1000, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 9:] = False
    h = model(codes, torch.randint(0, 1440, (B, T)), torch.randint(0, 2, (B, T)), torch.arange(T).expand(B, T), mask)
    assert h.shape == (B, T, config.hidden_size)
    if size in PRESET_PARAMS:  # the user's three tiers, roughly
        total, _ = count_parameters(BEHRTForMLM(config))
        assert 0.8 * PRESET_PARAMS[size] < total < 1.4 * PRESET_PARAMS[size]


def test_padding_does_not_change_real_tokens():
    model = BEHRT(BEHRTConfig.small(vocab_size=50)).eval()
    codes, ages = torch.randint(5, 50, (1, 6)), torch.randint(0, 900, (1, 6))
    seg, pos = torch.zeros(1, 6, dtype=torch.long), torch.arange(6)[None]
    short = model(codes, ages, seg, pos, torch.ones(1, 6, dtype=torch.bool))
    pad = torch.zeros(1, 4, dtype=torch.long)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).bool()
    long = model(torch.cat([codes, pad], 1), torch.cat([ages, pad], 1), torch.cat([seg, pad], 1),
                 torch.cat([pos, pad], 1), mask)
    torch.testing.assert_close(long[:, :6], short, atol=1e-5, rtol=1e-5)


def test_continuous_age_and_visit_gap_reach_the_hidden_states():
    """With every month-bucket vector zeroed, age and the gap between visits still change the output (and only
    through `time_features`, which reads them from the month ages and visit positions)."""
    model = BEHRT(BEHRTConfig.small(vocab_size=50)).eval()
    with torch.no_grad():
        model.embeddings.age.weight.zero_()
    codes = torch.tensor([[1, 7, 8, 2, 9, 2]])  # [CLS] visit 0: two codes [SEP], visit 1: one code [SEP]
    seg, pos, mask = torch.tensor([[0, 0, 0, 0, 1, 1]]), torch.tensor([[0, 0, 0, 0, 1, 1]]), torch.ones(1, 6).bool()

    def hidden(first: int, second: int) -> torch.Tensor:
        ages = torch.tensor([[first] * 4 + [second] * 2])
        return model(codes, ages, seg, pos, mask)

    young, old = hidden(240, 243), hidden(840, 843)  # 20 vs 70 years, same 3-month gap
    assert (young - old).abs().max() > 1e-3
    soon, late = (model.embeddings(codes, torch.tensor([[840] * 4 + [second] * 2]), seg, pos) for second in (841, 870))
    assert (soon[:, :4] - late[:, :4]).abs().max() < 1e-6  # the first visit's tokens carry only its own time
    assert (soon[:, 4:] - late[:, 4:]).abs().max() > 1e-3  # the gap (1 vs 30 months) reaches the next visit
    with torch.no_grad():
        model.embeddings.time.weight.zero_()
    torch.testing.assert_close(hidden(240, 243), hidden(840, 843))  # no month embedding, no time projection


def test_time_features_read_age_and_the_gap_to_the_previous_visit():
    ages = torch.tensor([[10, 10, 10, 10, 22, 22, 30, 30, 0, 0]])  # [CLS] static v0 v0 | v1 v1 | v2 v2 | pad pad
    positions = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 0, 0]])
    f = time_features(ages, positions)  # (1, 10, 2)
    torch.testing.assert_close(f[0, :, 0], ages[0].float() / 1200)
    gaps = torch.tensor([0, 0, 0, 0, 12, 12, 8, 8, 0, 0]).float()
    torch.testing.assert_close(f[0, :, 1], torch.log1p(gaps))


def test_attention_uses_explicit_linear_layers_that_receive_gradients():
    model = BEHRTForMLM(BEHRTConfig.small(vocab_size=40))
    codes = torch.randint(5, 40, (2, 8))
    labels = codes.clone()
    loss, _ = model(codes, torch.zeros_like(codes), torch.zeros_like(codes), torch.zeros_like(codes),
                    torch.ones_like(codes, dtype=torch.bool), labels)
    loss.backward()
    attention = model.behrt.layers[0].attention
    for name in ("query", "key", "value", "output"):
        layer = getattr(attention, name)
        assert isinstance(layer, torch.nn.Linear) and layer.weight.grad.abs().sum() > 0, name


class Records(Callback):
    def __init__(self):
        self.records = []

    def on_record(self, record):
        self.records.append(record)


def test_mlm_loss_falls_on_a_tiny_cohort(tmp_path):
    patients = patients_by_split(load_dataset("synthetic", None, 300, 0, tmp_path))
    vocab = build_vocabulary(patients["train"], min_count=2)
    enc = {s: [encode_patient(p, vocab, 64) for p in ps] for s, ps in patients.items()}
    arrays = {s: token_arrays(e) for s, e in enc.items()}
    torch.manual_seed(0)
    model = BEHRTForMLM(BEHRTConfig.small(len(vocab)))
    log = Records()
    trainer = Trainer(model, MLMTask(vocab), arrays["train"], arrays["tuning"],
                      TrainConfig(max_steps=250, batch_size=16, lr=1e-3, warmup_steps=10, log_every=10,
                                  eval_every=0), torch.device("cpu"), callbacks=[log])
    before = trainer.evaluate(arrays["held_out"]).metrics()["mlm_loss"]
    assert trainer.fit() is True
    after = trainer.evaluate(arrays["held_out"]).metrics()["mlm_loss"]
    train = [r["loss"] for r in log.records if r["split"] == "train"]
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3 - 0.4
    assert after < before - 0.5, (before, after)
    assert [r["step"] for r in log.records if r["split"] == "tuning"] == [250]
    assert isinstance(collate(enc["train"][:2]).codes, torch.Tensor)
