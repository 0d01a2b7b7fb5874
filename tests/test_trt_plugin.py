"""The TensorRT plugin's Python definitions, checked without TensorRT.

``tensorrt.plugin`` validates the decorated functions with ``inspect.signature`` and
``issubclass(param.annotation, TensorDesc)`` (its ``_validate.py``); a string annotation (what
``from __future__ import annotations`` leaves) makes every engine build die with ``TypeError``.
Here the functions are defined against a namespace of plain classes standing for ``trtp``'s
``TensorDesc``, ``KernelLaunchParams``, ``SymExprs`` and ``AutoTuneCombination``: the test checks
that the annotations are those class objects and pass the same ``issubclass`` / ``typing`` checks
``_validate.py`` runs. Registering with real TensorRT is the GPU check's job.
"""
from __future__ import annotations
import __future__

import inspect
import typing
from types import SimpleNamespace

import pytest

from quantart_runtime.backends import trt_plugin


def _namespace():
    classes = {name: type(name, (), {}) for name in ("TensorDesc", "KernelLaunchParams", "SymExprs",
                                                      "AutoTuneCombination")}
    trtp = SimpleNamespace(**classes)
    trt = SimpleNamespace(int32="int32", float16="float16")
    return trt, trtp


def test_module_does_not_postpone_annotations():
    assert not (trt_plugin.plugin_functions.__code__.co_flags & __future__.annotations.compiler_flag)
    assert getattr(trt_plugin, "annotations", None) is not __future__.annotations


def test_annotations_are_real_classes():
    trt, trtp = _namespace()
    fns = trt_plugin.plugin_functions(trt, trtp, 90, 88)

    reg = inspect.signature(fns["register"])
    tensors = [n for n, p in reg.parameters.items() if inspect.isclass(p.annotation)
               and issubclass(p.annotation, trtp.TensorDesc)]
    assert tensors == ["z", "codebook", "sqnorm"]
    assert [reg.parameters[n].annotation for n in ("embed_dim", "n_codes")] == [int, int]
    assert typing.get_origin(reg.return_annotation) is tuple
    assert all(issubclass(a, trtp.TensorDesc) for a in typing.get_args(reg.return_annotation))

    aot = inspect.signature(fns["aot_impl"])
    # _validate_aot_impl's schema: tensors, attributes, outputs, tactic
    assert list(aot.parameters) == ["z", "codebook", "sqnorm", "embed_dim", "n_codes", "outputs", "tactic"]
    assert all(issubclass(a, trtp.TensorDesc) for a in typing.get_args(aot.parameters["outputs"].annotation))
    assert issubclass(aot.parameters["tactic"].annotation, int)
    ret = typing.get_args(aot.return_annotation)
    assert typing.get_origin(aot.return_annotation) is tuple and len(ret) == 4
    for i in (0, 1):
        assert set(typing.get_args(ret[i])) == {str, bytes}
    assert issubclass(ret[2], trtp.KernelLaunchParams) and issubclass(ret[3], trtp.SymExprs)

    tune = inspect.signature(fns["autotune"])
    assert list(tune.parameters) == ["z", "codebook", "sqnorm", "outputs"]
    assert typing.get_origin(tune.return_annotation) is list
    assert all(issubclass(a, trtp.AutoTuneCombination) for a in typing.get_args(tune.return_annotation))


def test_registration_is_one_architecture_per_process():
    saved = dict(trt_plugin._registered)
    try:
        trt_plugin._registered.clear()
        trt_plugin._registered.update(arch=90, ptx_version=88)
        trt_plugin.register_nearest_code_plugin(90, 88)           # same: a no-op, TensorRT not touched
        with pytest.raises(RuntimeError, match="already registered for sm_90"):
            trt_plugin.register_nearest_code_plugin(80, 88)
    finally:
        trt_plugin._registered.clear()
        trt_plugin._registered.update(saved)
