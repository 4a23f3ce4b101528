import torch

import saliencekit as sk


def test_methods_registered():
    names = set(sk.list_methods(details=True))
    assert {"gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "smoothtaylor",
            "positive", "negative", "active", "inactive"} <= names


def test_gradient_of_linear_model_is_its_weight_row(linear_model):
    x = torch.randn(2, 3, 8, 8)
    e = sk.explain(linear_model, x, "gradient", target=[1, 3])
    w = linear_model.fc.weight.detach()
    assert torch.allclose(e.attributions[0].flatten(), w[1])
    assert torch.allclose(e.attributions[1].flatten(), w[3])
    assert e.targets.tolist() == [1, 3]
