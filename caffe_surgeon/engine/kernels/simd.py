"""LLVM vector IR helpers for the kernels Numba alone leaves unvectorised or half-width.

Numba compiles for the host CPU, but LLVM's auto-vectoriser prefers 256-bit vectors on
AVX-512 parts and spills a loop's pointers when it holds many: the micro-kernel
(:mod:`.microkernel`) and the depthwise taps (:mod:`.depthwise_planes`) therefore write
their inner loops as IR on ``<16 x float>`` through ``numba.extending.intrinsic``. LLVM
lowers a 16-lane vector to one zmm with AVX-512 and to a ymm pair with AVX2.
"""
from __future__ import annotations

from llvmlite import ir

#: float32 lanes of one vector
LANES = 16
VEC = ir.VectorType(ir.FloatType(), LANES)
I32, I64 = ir.IntType(32), ir.IntType(64)


def splat(builder, value, vec_type=VEC):
    """``value`` in every lane of a ``vec_type``."""
    one = builder.insert_element(ir.Constant(vec_type, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(I32, vec_type.count), [0] * vec_type.count))


def data_pointer(context, builder, array_type, array, offset):
    """The address of ``array[offset]`` (a 1-D float32 array)."""
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [offset])


def load(builder, ptr):
    """One unaligned vector from ``ptr`` (a float pointer)."""
    return builder.load(builder.bitcast(ptr, VEC.as_pointer()), align=4)


def store(builder, value, ptr):
    builder.store(value, builder.bitcast(ptr, VEC.as_pointer()), align=4)
