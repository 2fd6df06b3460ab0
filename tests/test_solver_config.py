"""Reading ``solver.prototxt``: Caffe's defaults and read-time rewrites, and one-line
errors naming file, line and field for everything we do not reproduce. No torch needed."""
from __future__ import annotations

import pytest

from caffe_surgeon.caffe import caffe_pb2
from caffe_surgeon.errors import ModelError
from caffe_surgeon.training.solver_config import FIELD_GROUPS, SolverConfig

LENET = """# the LeNet solver of Caffe's examples
net: "examples/mnist/lenet_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "examples/mnist/lenet"
solver_mode: GPU
"""


def refused(text: str, tmp_path) -> str:
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    with pytest.raises(ModelError) as info:
        SolverConfig.from_prototxt(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message[len(str(path)):]


def test_lenet_solver_reads_with_caffes_defaults(tmp_path):
    path = tmp_path / "lenet_solver.prototxt"
    path.write_text(LENET)
    c = SolverConfig.from_prototxt(path)
    assert (c.type, c.schedule.policy, c.max_iter, c.test_iter, c.test_interval) == \
        ("SGD", "inv", 10000, (100,), 500)
    assert c.net == "examples/mnist/lenet_train_test.prototxt" and c.train_net is None
    assert (c.iter_size, c.average_loss, c.clip_gradients, c.regularization_type) == (1, 1, -1.0, "L2")
    assert (c.momentum2, c.rms_decay, c.random_seed, c.snapshot_after_train) == (
        pytest.approx(0.999), pytest.approx(0.99), -1, True)
    assert c.test_initialization is True
    assert c.snapshot_path(5000, ".caffemodel") == "examples/mnist/lenet_iter_5000.caffemodel"
    assert [i for i in range(2500, 10001, 2500) if c.snapshot_due(i)] == [5000, 10000]
    assert c.display_due(0) and c.display_due(200) and not c.display_due(150)
    assert c.notes == ("solver_mode ignored: the device comes from the command line "
                       "(gpu: / -gpus), not the solver",)


def test_every_solver_field_is_placed_in_exactly_one_group():
    placed = [name for names in FIELD_GROUPS.values() for name in names]
    assert len(placed) == len(set(placed))
    assert set(placed) == {f.name for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields}


def test_an_unknown_field_is_a_one_line_error_with_its_line(tmp_path):
    message = refused('base_lr: 0.1\nlr_policy: "fixed"\nlearning_rate: 3\n', tmp_path)
    assert message.startswith(":3:") and "unknown field 'learning_rate'" in message


def test_legacy_solver_type_enum_becomes_the_type_string():
    c = SolverConfig.from_text('solver_type: ADAM base_lr: 0.1 lr_policy: "fixed"')
    assert c.type == "Adam"


def test_type_and_solver_type_together_are_refused_as_caffe_does(tmp_path):
    message = refused('type: "SGD"\nsolver_type: NESTEROV\nbase_lr: 1\nlr_policy: "fixed"\n', tmp_path)
    assert message.startswith(":2: solver field 'solver_type'")


def test_a_solver_type_in_the_wrong_case_names_caffes_spelling(tmp_path):
    message = refused('base_lr: 1\nlr_policy: "fixed"\ntype: "adam"\n', tmp_path)
    assert message.startswith(":3: solver field 'type': unknown solver type 'adam'")
    assert "'Adam'" in message


@pytest.mark.parametrize("text, line, field", [
    ('lr_policy: "fixed"\n', None, "base_lr"),
    ('base_lr: 1\n', None, "lr_policy"),
    ('base_lr: 1\nlr_policy: "plateau"\n', 2, "lr_policy"),
    ('base_lr: 1\nlr_policy: "step"\ngamma: 0.1\n', 2, "stepsize"),
    ('base_lr: 1\nlr_policy: "step"\nstepsize: 10\ngamma: -1\n', 4, "gamma"),
    ('base_lr: 1\nlr_policy: "multistep"\ngamma: 0.1\n', 2, "stepvalue"),
    ('base_lr: 1\nlr_policy: "poly"\npower: 1\n', 2, "max_iter"),
    ('base_lr: 1\nlr_policy: "fixed"\nregularization_type: "L3"\n', 3, "regularization_type"),
    ('base_lr: 1\nlr_policy: "fixed"\ntype: "AdaGrad"\nmomentum: 0.9\n', 4, "momentum"),
    ('base_lr: 1\nlr_policy: "fixed"\ntype: "RMSProp"\nrms_decay: 1\n', 4, "rms_decay"),
    ('base_lr: 1\nlr_policy: "fixed"\niter_size: 0\n', 3, "iter_size"),
    ('base_lr: 1\nlr_policy: "fixed"\naverage_loss: 0\n', 3, "average_loss"),
    ('base_lr: 1\nlr_policy: "fixed"\ndisplay: -5\n', 3, "display"),
    ('base_lr: 1\nlr_policy: "fixed"\nsnapshot_format: HDF5\n', 3, "snapshot_format"),
    ('base_lr: 1\nlr_policy: "fixed"\nnet_param { name: "x" }\n', 3, "net_param"),
    ('base_lr: 1\nlr_policy: "fixed"\nplateau_winsize: 10\n', 3, "plateau_winsize"),
])
def test_settings_we_do_not_reproduce_are_refused_at_their_line(text, line, field, tmp_path):
    message = refused(text, tmp_path)
    where = f":{line}: " if line else ": "
    assert message.startswith(f"{where}solver field '{field}'"), message


def test_device_and_reduction_settings_are_accepted_with_a_note():
    c = SolverConfig.from_text('base_lr: 1 lr_policy: "fixed" solver_mode: CPU device_id: 3 '
                               'layer_wise_reduce: false debug_info: true')
    assert [n.split(" ")[0] for n in c.notes] == ["solver_mode", "device_id", "debug_info",
                                                  "layer_wise_reduce"]


def test_snapshot_prefix_defaults_to_the_solver_file_and_a_folder_takes_its_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    base = 'base_lr: 1 lr_policy: "fixed" '
    assert SolverConfig.from_text(base, "models/solver.prototxt").snapshot_prefix == "models/solver"
    c = SolverConfig.from_text(base + 'snapshot_prefix: "snaps"', "models/solver.prototxt")
    assert c.snapshot_prefix == "snaps/solver"
    c = SolverConfig.from_text(base + 'snapshot_prefix: "snaps/run"', "models/solver.prototxt")
    assert c.snapshot_prefix == "snaps/run"


def test_detection_evaluation_settings_are_kept_for_the_loop():
    c = SolverConfig.from_text('base_lr: 1 lr_policy: "fixed" ap_version: "11point" '
                               'eval_type: "detection" test_state { stage: "val" }')
    assert c.other == {"ap_version": "11point", "eval_type": "detection",
                       "test_state": [{"stage": ["val"]}]}


def test_a_missing_solver_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelError, match="solver prototxt not found"):
        SolverConfig.from_prototxt(tmp_path / "nope.prototxt")
