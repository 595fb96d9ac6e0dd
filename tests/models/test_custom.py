"""model=custom: a user's factory gets only the data facts it accepts."""

import pytest
from torch import nn

from qat.models.custom import accepted, custom_model, resolve


def only_classes(num_classes):
    return nn.Linear(4, num_classes)


def everything(**kwargs):
    everything.seen = kwargs
    return nn.Linear(4, kwargs["num_classes"])


def test_a_factory_gets_the_facts_it_accepts():
    facts = {"num_classes": 3, "in_channels": 1, "image_size": (8, 8)}
    assert accepted(only_classes, facts) == {"num_classes": 3}
    assert custom_model(only_classes, 3, 1, (8, 8)).out_features == 3
    custom_model(everything, 3, 1, [8, 8], kwargs={"depth": 2})
    assert everything.seen == {"num_classes": 3, "in_channels": 1, "image_size": (8, 8), "depth": 2}
    m = custom_model("tests.models.test_custom:only_classes", 5)
    assert m.out_features == 5 and resolve("tests.models.test_custom.only_classes") is only_classes


@pytest.mark.parametrize("spec, error, match", [
    ("nomodule_xyz:f", ImportError, "cannot import nomodule_xyz"),
    ("tests.models.test_custom:missing", AttributeError, "has no attribute 'missing'"),
    ("justaname", ValueError, "package.module:function"),
])
def test_bad_factories_say_what_is_wrong(spec, error, match):
    with pytest.raises(error, match=match):
        custom_model(spec, 3)


def test_data_facts_cannot_be_overridden_and_the_result_must_be_a_module():
    with pytest.raises(ValueError, match="num_classes, which come from the data"):
        custom_model(only_classes, 3, kwargs={"num_classes": 4})
    with pytest.raises(TypeError, match="not an nn.Module"):
        custom_model(lambda num_classes: "model", 3)
