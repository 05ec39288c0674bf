import numpy as np
import pytest

from keras_dsd import recipes
from keras_dsd.optimizers import AdamW
from keras_dsd.testing import test_utils


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_recipe_builds_a_compiled_model(name):
    # On dsd_tiny, so that the ImageNet recipe builds in a second.
    recipe = recipes.get(name).replace(preset="dsd_tiny")
    model = recipe.build_model(seed=3)
    for key, value in recipe.generator.items():
        assert getattr(model, key) == value, key
    assert model.seed == 3
    optimizer = model.optimizer
    assert isinstance(optimizer, AdamW)
    assert optimizer.clipnorm == recipe.clipnorm
    np.testing.assert_allclose(
        float(test_utils.to_numpy(optimizer.weight_decay or 0.0)),
        recipe.weight_decay,
    )


def test_replace_merges_generator_and_sampling():
    digits = recipes.get("digits")
    changed = digits.replace(
        generator={"t_min": 0.05}, sampling={"num_steps": 4}, batch_size=8
    )
    assert changed.generator == {**digits.generator, "t_min": 0.05}
    assert changed.sampling == {**digits.sampling, "num_steps": 4}
    assert changed.batch_size == 8
    assert digits.generator["t_min"] == 0.25  # the original is unchanged


def test_unknown_recipe():
    with pytest.raises(ValueError, match="name='cifar'.*Expected one of"):
        recipes.get("cifar")
