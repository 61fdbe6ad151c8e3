"""Grad-CAM family base maps: hand-computed answers and parity with pytorch-grad-cam."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from stages.basemaps import (
    BASE_METHODS,
    diffusion_cam_base,
    get_base_method,
    grad_cam,
    grad_cam_from_weights,
    grad_cam_pp,
    grad_x_act,
    llava_cam,
    tam_map,
)
from stages.basemaps.gradcam_pp import ALPHA_PP

# Four grid tokens on a 2 x 2 grid, two channels.
ACTS = np.array([[1.0, -1.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 1.0]])
ALPHA_POS = np.array([[0.5, 2.0]])


def test_grad_cam_hand_computed():
    grads = np.array([[1.0, 0.0], [3.0, -2.0], [-1.0, 2.0], [1.0, 4.0]])
    # alpha = column means = [1, 1]; map = A @ alpha = [0, 2, 3, 0]
    cam = grad_cam(ACTS, grads, (2, 2))
    np.testing.assert_allclose(cam, [[0.0, 2.0], [3.0, 0.0]])
    assert cam.dtype == np.float32 and cam.shape == (2, 2)
    # signed by default; relu clips
    grads_neg = -grads
    np.testing.assert_allclose(grad_cam(ACTS, grads_neg, (2, 2)), [[0.0, -2.0], [-3.0, 0.0]])
    np.testing.assert_allclose(grad_cam(ACTS, grads_neg, (2, 2), relu=True), np.zeros((2, 2)))


def test_grad_cam_target_axis_and_from_weights_agree():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(12, 5)).astype(np.float32)
    grads = rng.normal(size=(3, 12, 5)).astype(np.float32)
    cams = grad_cam(acts, grads, (3, 4))
    assert cams.shape == (3, 3, 4)
    alpha = grads.mean(axis=1, dtype=np.float64).astype(np.float32)
    # A batched and a single matmul may sum in different orders (BLAS kernels differ by CPU): float32
    # agreement to a few ulps of the map's scale (|cam| ~ 1 here), not bit equality.
    tol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cams, grad_cam_from_weights(acts, alpha, (3, 4)), **tol)
    np.testing.assert_allclose(cams[1], grad_cam(acts, grads[1], (3, 4)), **tol)
    # row-major grid order: token 5 is row 1, column 1
    np.testing.assert_allclose(cams[0, 1, 1], acts[5] @ alpha[0], rtol=1e-6)


def test_diffusion_cam_base_hand_computed():
    # mean_c ReLU(alpha_c A_c): token0 (0.5 + 0) / 2, token1 (1 + 0) / 2, token2 (0 + 6) / 2, token3 (0 + 2) / 2
    cam = diffusion_cam_base(ACTS, ALPHA_POS, (2, 2))
    np.testing.assert_allclose(cam, [[[0.25, 0.5], [3.0, 1.0]]])
    # official normalisation divides by max, not by the range
    norm = diffusion_cam_base(ACTS, ALPHA_POS, (2, 2), normalize=True)
    np.testing.assert_allclose(norm, [[[0.0, 0.25 / 3], [2.75 / 3, 0.75 / 3]]], rtol=1e-6)
    with pytest.raises(ValueError, match="alpha_pos"):
        diffusion_cam_base(ACTS, -ALPHA_POS, (2, 2))


def test_diffusion_cam_base_equals_per_channel_relu_mean():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(20, 7))
    alpha = np.abs(rng.normal(size=(2, 7)))
    direct = np.maximum(alpha[:, None, :] * acts[None], 0).mean(axis=-1).reshape(2, 4, 5)
    np.testing.assert_allclose(diffusion_cam_base(acts, alpha, (4, 5)), direct, rtol=1e-5, atol=1e-6)


def test_llava_cam_options_reproduce_the_original_steps():
    # mean_c(alpha_c A_c): [-0.75, 0.5, 3.0, 0.75]
    raw = llava_cam(ACTS, ALPHA_POS, (2, 2))
    np.testing.assert_allclose(raw, [[[-0.75, 0.5], [3.0, 0.75]]])
    np.testing.assert_allclose(llava_cam(ACTS, ALPHA_POS, (2, 2), relu=True, normalize="max"), [[[0.0, 1 / 6], [1.0, 0.25]]], rtol=1e-6)
    original = llava_cam(ACTS, ALPHA_POS, (2, 2), relu=True, normalize="max", threshold=0.5)
    np.testing.assert_allclose(original, [[[0.0, 0.0], [1.0, 0.0]]])
    # an all-zero map is left as it is rather than divided by zero
    zero = llava_cam(np.zeros((4, 2)), ALPHA_POS, (2, 2), relu=True, normalize="max")
    np.testing.assert_array_equal(zero, np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="normalize"):
        llava_cam(ACTS, ALPHA_POS, (2, 2), normalize="minmax")


def test_grad_x_act_and_tam():
    gxa = np.array([[1.0, -2.0, 3.0, -4.0, 5.0, -6.0]])
    np.testing.assert_array_equal(grad_x_act(gxa, (2, 3)), [[[1, -2, 3], [-4, 5, -6]]])
    np.testing.assert_array_equal(grad_x_act(gxa, (2, 3), relu=True), [[[1, 0, 3], [0, 5, 0]]])
    np.testing.assert_array_equal(tam_map(gxa, (3, 2)), [[[1, 0], [3, 0], [5, 0]]])
    assert not np.shares_memory(grad_x_act(gxa, (2, 3)), gxa)


def test_validation_names_the_bad_parameter():
    with pytest.raises(ValueError, match="grid 3x3 holds 9 tokens"):
        grad_cam_from_weights(ACTS, ALPHA_POS, (3, 3))
    with pytest.raises(ValueError, match="grid must be a pair"):
        grad_x_act(np.zeros((1, 4)), (2, 0))
    with pytest.raises(ValueError, match="alpha has 3 channels"):
        grad_cam_from_weights(ACTS, np.zeros((1, 3)), (2, 2))
    with pytest.raises(ValueError, match="grads must have shape"):
        grad_cam(ACTS, np.zeros((4, 3)), (2, 2))
    with pytest.raises(ValueError, match="NaN"):
        tam_map(np.array([[np.nan, 0, 0, 0]]), (2, 2))


def test_registry_declares_needs_and_returns_float32_stacks():
    arrays = {
        "acts": ACTS,
        "alpha": np.array([[1.0, 1.0]]),
        "alpha_pos": ALPHA_POS,
        "gxa": np.array([[1.0, 2.0, 3.0, 4.0]]),
        "tam_logits": np.array([[-1.0, 2.0, 3.0, 4.0]]),
        "gnorm": np.array([[0.5, 0.0, 2.0, 1.0]]),
        "alpha_pp": np.array([[0.0, 1.0]]),
    }
    assert set(BASE_METHODS) == {"gradcam", "gradcam-pp", "diffusion-cam-base", "llava-cam", "grad-x-act", "grad-norm",
                                 "tam"}
    for name, method in BASE_METHODS.items():
        out = method(arrays, (2, 2))
        assert out.shape == (1, 2, 2) and out.dtype == np.float32, name
    np.testing.assert_allclose(BASE_METHODS["gradcam"](arrays, (2, 2)), [[[0.0, 2.0], [3.0, 0.0]]])
    np.testing.assert_array_equal(BASE_METHODS["grad-norm"](arrays, (2, 2)), [[[0.5, 0.0], [2.0, 1.0]]])  # row-major grid
    np.testing.assert_array_equal(BASE_METHODS["gradcam-pp"](arrays, (2, 2)), [[[-1.0, 0.0], [3.0, 1.0]]])  # A[:, 1]
    assert [r.name for r in get_base_method("llava-cam").reductions] == ["alpha_pos"]
    method = get_base_method("tam")
    assert method.needs == ("tam_logits",)
    assert method.missing({"acts": ACTS}) == ["tam_logits"]
    with pytest.raises(ValueError, match="lacks \\['tam_logits'\\]"):
        method({"acts": ACTS}, (2, 2))
    with pytest.raises(ValueError, match="known: gradcam"):
        get_base_method("scorecam")


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _import_pytorch_grad_cam():
    """Import pytorch-grad-cam (1.5.x) for the parity tests: the module ``pytorch_grad_cam`` and the target class.

    Its package import pulls in torchvision (PyPI's wheel does not load beside our CPU
    torch) and scikit-learn (only for NMF / KernelPCA methods these tests do not use);
    when they fail to import, stub modules with just the names its import needs stand in.
    """
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        pytest.skip("pytorch-grad-cam is not installed (pip install --no-deps grad-cam ttach opencv-python-headless)")
    try:
        import torchvision  # noqa: F401
    except Exception:
        functional = _stub("torchvision.transforms.functional", resize=None)
        transforms = _stub(
            "torchvision.transforms", functional=functional, **{n: type(n, (), {}) for n in ("Compose", "Normalize", "ToTensor")}
        )
        sys.modules["torchvision"] = _stub("torchvision", transforms=transforms)
        sys.modules["torchvision.transforms"] = transforms
        sys.modules["torchvision.transforms.functional"] = functional
    try:
        import sklearn.decomposition  # noqa: F401
    except Exception:
        decomposition = _stub("sklearn.decomposition", NMF=type("NMF", (), {}), KernelPCA=type("KernelPCA", (), {}))
        sys.modules["sklearn"] = _stub("sklearn", decomposition=decomposition)
        sys.modules["sklearn.decomposition"] = decomposition
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        pytest.skip(f"pytorch-grad-cam cannot be imported: {e}")
    return pytorch_grad_cam, ClassifierOutputTarget


def _conv_case(torch, cam_class, target_class):
    """A small conv net, pytorch-grad-cam's map of class 1 at its second conv layer with ``cam_class``, and that
    layer's activations and gradient as our (N = H*W tokens, D = C channels), row-major grid."""
    torch.manual_seed(0)
    # "same" padding and no pooling before the target layer: its map has the input's size,
    # so pytorch-grad-cam's resize is the identity and the maps compare at feature resolution.
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(5, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 3),
    ).eval()
    layer = model[2]
    x = torch.randn(1, 3, 7, 9)

    with cam_class(model=model, target_layers=[layer]) as cam:
        theirs = cam(input_tensor=x, targets=[target_class(1)])[0]

    saved = {}

    def keep(module, inputs, output):
        saved["acts"] = output
        output.register_hook(lambda grad: saved.update(grads=grad))

    handle = layer.register_forward_hook(keep)
    model(x)[0, 1].backward()
    handle.remove()
    c = saved["acts"].shape[1]
    acts = saved["acts"][0].detach().numpy().reshape(c, -1).T  # (C, H, W) -> (H*W, C), row-major grid
    grads = saved["grads"][0].numpy().reshape(c, -1).T
    assert theirs.shape == (7, 9)
    return theirs, acts, grads


def _min_max(cam):
    assert cam.max() > cam.min()
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_parity_with_pytorch_grad_cam():
    torch = pytest.importorskip("torch")
    library, target = _import_pytorch_grad_cam()
    theirs, acts, grads = _conv_case(torch, library.GradCAM, target)
    ours = grad_cam(acts, grads, (7, 9), relu=True)
    np.testing.assert_allclose(_min_max(ours), theirs, atol=1e-5)


def test_grad_cam_pp_hand_computed():
    # A (N=2, D=2), one target's G; S = column sums of A = [4, 2].
    acts = np.array([[1.0, 2.0], [3.0, 0.0]])
    grads = np.array([[[1.0, 0.0], [-1.0, 1.0]]])
    # channel 0: token 0 a = 1 / (2 + 4 * 1) = 1/6, ReLU(1) = 1; token 1 has G < 0, ReLU(G) = 0  -> w0 = 1/6
    # channel 1: token 0 has G == 0 (a = 0); token 1 a = 1 / (2 + 2 * 1) = 1/4, ReLU(1) = 1         -> w1 = 1/4
    weights = ALPHA_PP.from_arrays(grads, acts)
    np.testing.assert_allclose(weights, [[1 / 6, 1 / 4]], rtol=1e-5)
    assert weights.dtype == np.float32
    # map = A @ w = [1/6 + 2/4, 3/6]
    np.testing.assert_allclose(grad_cam_pp(acts, weights, (2, 1)), [[[2 / 3], [1 / 2]]], rtol=1e-5)
    np.testing.assert_allclose(grad_cam_pp(-acts, weights, (2, 1), relu=True), np.zeros((1, 2, 1)))
    with pytest.raises(ValueError, match="alpha_pp has 3 channels"):
        grad_cam_pp(acts, np.zeros((1, 3)), (2, 1))


def test_grad_cam_pp_parity_with_pytorch_grad_cam():
    torch = pytest.importorskip("torch")
    library, target = _import_pytorch_grad_cam()
    theirs, acts, grads = _conv_case(torch, library.GradCAMPlusPlus, target)
    weights = ALPHA_PP.from_arrays(grads[None], acts)
    ours = get_base_method("gradcam-pp")({"acts": acts, "alpha_pp": weights}, (7, 9), relu=True)[0]
    np.testing.assert_allclose(_min_max(ours), theirs, atol=1e-5)
    # Grad-CAM++ weights differ from Grad-CAM's on this net: the parity is not Grad-CAM's by accident
    assert np.abs(_min_max(ours) - _min_max(grad_cam(acts, grads, (7, 9), relu=True))).max() > 1e-2
