import pytest
import torch

from ehrseq.training.trainer import Trainer
from ehrseq.training.verify import verify_resume
from ehrseq_runner.job.prepare import make_trainer, prepare_data
from ehrseq_runner.spec.job_spec import load_spec

from support.helpers import SMALL_SPEC


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    spec = load_spec(SMALL_SPEC, ["data.num_patients=300", "data.max_seq_len=32", "train.log_every=1",
                                  "train.batch_size=16", "train.eval_every=0", "train.max_steps=12"])
    return spec, prepare_data(spec, tmp_path_factory.mktemp("data"))


def test_verify_resume_reports_an_exact_match(setup):
    spec, data = setup
    result = verify_resume(lambda: make_trainer(spec, data, torch.device("cpu")))
    assert result.split_at == 6 and len(result.resumed_losses) == 12
    assert result.losses_match and result.parameters_match


def test_verify_resume_catches_a_restore_that_forgets_the_optimizer(setup, monkeypatch):
    spec, data = setup
    original = Trainer.load_state_dict

    def forgetful(self, state):
        original(self, {**state, "optimizer": self.optimizer.state_dict()})  # Adam moments lost

    monkeypatch.setattr(Trainer, "load_state_dict", forgetful)
    result = verify_resume(lambda: make_trainer(spec, data, torch.device("cpu")))
    assert not result.losses_match and not result.parameters_match
    assert result.straight_losses[:6] == result.resumed_losses[:6]  # identical up to the restore


def test_verify_resume_command(cli):
    result = cli("verify-resume", str(SMALL_SPEC), "--steps", "8", "--set", "data.num_patients=200")
    assert result.returncode == 0, result.stderr
    assert "match" in result.stderr and "MISMATCH" not in result.stderr
