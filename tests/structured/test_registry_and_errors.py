"""Registry (names, get, registering a new class from outside) and bad-input errors of the base class."""
from __future__ import annotations

import pytest
import torch

import structured
from structured import properties as P
from structured.base import StructuredMatrix, randn


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made by a test vanish afterwards (register/names/get read the module global)."""
    monkeypatch.setattr(structured, "_REGISTRY", structured._REGISTRY.copy())


def test_builtin_names():
    assert {"cauchy", "dense", "dft", "low_rank", "quasiseparable", "semiseparable", "toeplitz",
            "vandermonde"} <= set(structured.names())
    assert structured.names() == sorted(structured.names())
    for name in structured.names():
        cls = structured.get(name)
        assert issubclass(cls, StructuredMatrix) and cls.name == name and cls.property_name


def test_unknown_name_lists_registered():
    with pytest.raises(KeyError, match="unknown structured class 'nope'.*toeplitz"):
        structured.get("nope")


def test_register_a_new_class_from_a_test_file(private_registry, gen, rel_err):
    @structured.register("scaled_identity")
    class ScaledIdentity(StructuredMatrix):
        """m_ij = s * [i == j]."""
        property_name = "numerical rank <= L"
        has_order = False

        def __init__(self, s, length):
            super().__init__(length, s.shape, s.dtype, s.device, None)
            self.s = s

        def to_dense(self):
            return self.s[..., None, None] * torch.eye(self.length, dtype=self.s.dtype)

        def _fast_matmul(self, x):
            return self.s.to(x.dtype)[..., None, None] * x

        def check_structure(self, tol=None):
            D = self.to_dense()
            return P.report(self.name, self.property_name, P.numerical_rank(D), self.length, 1e-10)

        @classmethod
        def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
            L, batch, _, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=None)
            return cls(randn(batch, dtype, device, generator), L)

    assert "scaled_identity" in structured.names()
    M = structured.get("scaled_identity").random(5, batch_shape=(2,), dtype=torch.float64, generator=gen)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    assert rel_err(M.matmul(x), M.matmul(x, method="explicit")) <= 1e-15
    assert M.check_structure().ok

    # Re-registering the same class is idempotent; another class under the same name is an error.
    structured.register("scaled_identity")(ScaledIdentity)
    with pytest.raises(ValueError, match="'scaled_identity' is already registered"):
        @structured.register("scaled_identity")
        class Other(ScaledIdentity):
            pass
    with pytest.raises(ValueError, match="'toeplitz' is already registered"):
        structured.register("toeplitz")(ScaledIdentity)
    with pytest.raises(ValueError, match="StructuredMatrix subclass"):
        structured.register("not_a_matrix")(dict)
    with pytest.raises(ValueError, match="name must be a Python identifier"):
        structured.register("bad name")


def test_registration_did_not_leak():
    assert "scaled_identity" not in structured.names()


EXACT = ("dense", "low_rank", "toeplitz", "dft", "semiseparable", "quasiseparable")


@pytest.mark.parametrize("name", EXACT)
def test_matmul_input_errors(name, gen):
    M = structured.get(name).random(6, batch_shape=(2,), dtype=torch.float64, generator=gen)
    with pytest.raises(ValueError, match="method must be one of .*'fast'.*got 'quick'"):
        M.matmul(torch.zeros(2, 6, 1, dtype=torch.float64), method="quick")
    with pytest.raises(ValueError, match=r"x must have shape .*x.shape\[-2\] is 5"):
        M.matmul(torch.zeros(2, 5, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have shape"):
        M.matmul(torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"batch dims of x \(3,\) do not broadcast .*\(2,\)"):
        M.matmul(torch.zeros(3, 6, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        M.matmul(torch.zeros(2, 6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        M.matmul([[1.0]] * 6)


@pytest.mark.parametrize("name", EXACT)
def test_random_argument_errors(name):
    cls = structured.get(name)
    with pytest.raises(ValueError, match="length must be a positive int"):
        cls.random(0)
    with pytest.raises(ValueError, match="length"):
        cls.random(3.5)
    with pytest.raises(ValueError, match="batch_shape"):
        cls.random(4, batch_shape=(2, 0))
    with pytest.raises(ValueError, match="dtype"):
        cls.random(4, dtype=torch.int64)
    if cls.has_order:
        with pytest.raises(ValueError, match="order must be a positive int"):
            cls.random(4, order=0)
    else:
        with pytest.raises(ValueError, match="order must be None"):
            cls.random(4, order=3)


def test_constructor_shape_errors():
    from structured.dense import Dense
    from structured.low_rank import LowRank
    with pytest.raises(ValueError, match="m must be square"):
        Dense(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="q and k"):
        LowRank(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="batch dimensions .* q: \\(2,\\), k: \\(3,\\)"):
        LowRank(torch.zeros(2, 5, 2), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="q must have shape .*nonzero"):
        LowRank(torch.zeros(0, 2), torch.zeros(0, 2))


def _zero_length_constructors():
    from structured.cauchy import Cauchy
    from structured.dense import Dense
    from structured.dft import DFT
    from structured.low_rank import LowRank
    from structured.quasiseparable import Quasiseparable
    from structured.semiseparable import Semiseparable
    from structured.toeplitz import Toeplitz
    from structured.vandermonde import Vandermonde
    z2, z1 = torch.ones(0, 2), torch.zeros(0)
    return {
        "dense": (lambda: Dense(torch.zeros(0, 0)), r"m must have shape .* got shape \(0, 0\)"),
        "low_rank": (lambda: LowRank(z2, z2), r"q must have shape .* got shape \(0, 2\)"),
        "toeplitz": (lambda: Toeplitz(z1), r"w must have shape .* got shape \(0,\)"),
        "dft": (lambda: DFT(0), r"length must be a positive int \(>= 1\), got 0"),
        "vandermonde": (lambda: Vandermonde(z2, z2), r"q must have shape .* got shape \(0, 2\)"),
        "cauchy": (lambda: Cauchy(z2, z2), r"q must have shape .* got shape \(0, 2\)"),
        "semiseparable": (lambda: Semiseparable(z2, z2, z1), r"b must have shape .* got shape \(0, 2\)"),
        "quasiseparable": (lambda: Quasiseparable(z2, z2, z1, z1), r"b must have shape .* got shape \(0, 2\)"),
    }


def test_every_builtin_class_rejects_length_zero():
    """Length 0 is rejected by every constructor, naming the argument and its shape (or value)."""
    cases = _zero_length_constructors()
    builtin = {n for n in structured.names() if structured.get(n).__module__.startswith("structured.")}
    assert set(cases) == builtin  # a new built-in class must join this list (plug-ins registered elsewhere need not)
    for name, (build, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            build()
        with pytest.raises(ValueError, match="length must be a positive int"):
            structured.get(name).random(0)


@pytest.mark.parametrize("call, match", [
    (lambda: P.numerical_rank(torch.randn(5, 5) * float("nan")), "M must be finite, got 25 NaN or infinite entries"),
    (lambda: P.numerical_rank(torch.eye(5) * float("inf")), "M must be finite"),
    (lambda: P.spectral_norm(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), "M must be finite, got 1 NaN"),
    (lambda: P.semiseparable_order(torch.full((4, 4), float("nan"))), "M must be finite"),
    (lambda: P.displacement_rank(torch.eye(3), torch.eye(3) * float("inf"), torch.eye(3)), "A must be finite"),
    (lambda: P.cauchy_displacement_rank(torch.eye(3), torch.tensor([0.0, float("nan"), 1.0]), torch.ones(3)),
     "x must be finite"),
    (lambda: P.toeplitz_displacement_rank(torch.randn(4, 5)),
     r"M must be square, \(\*batch, n, n\), for the Toeplitz displacement Z M - M Z; got shape \(4, 5\)"),
    (lambda: P.cosine_displacement_rank(torch.randn(4, 5), torch.rand(4)), "M must be square"),
    (lambda: P.cosine_displacement_rank(torch.randn(4, 4), torch.rand(3)), r"theta must be \(\*batch, 4\)"),
    (lambda: P.semiseparable_order(torch.randn(4, 5)), "M must be square"),
    (lambda: P.quasiseparable_order(torch.randn(3, 5)), "M must be square"),
    (lambda: P.displacement_rank(torch.randn(4, 4), torch.randn(3, 3), torch.randn(4, 4)),
     r"A must be \(\*batch, 4, 4\) and B \(\*batch, 4, 4\)"),
    (lambda: P.cauchy_displacement_rank(torch.randn(4, 5), torch.randn(4), torch.randn(3)),
     r"x must be \(\*batch, 4\) and y \(\*batch, 5\)"),
    (lambda: P.displacement_rank(torch.randn(2, 4, 4), torch.randn(3, 4, 4), torch.eye(4)), "do not broadcast"),
])
def test_properties_bad_input_is_a_value_error_naming_the_argument(call, match):
    """Non-finite or non-square input is a ValueError naming the argument."""
    with pytest.raises(ValueError, match=match):
        call()
