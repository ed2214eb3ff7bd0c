/* wquant.h - the CPU twin of the device weight quantisers (kernels/gemv.cu hmc_quantize_fp8,
 * kernels/gemv_quant.cu hmc_quantize_nvfp4): the same bytes, bit for bit, so a model quantised
 * offline (tools/quantize) loads into the CUDA engine exactly as if it had been quantised there.
 *
 * Inputs are bf16 bit patterns (the CUDA loader rounds every weight to bf16 before quantising).
 * Every step is one IEEE fp32 operation in the order the kernels do it (nvcc without fast-math
 * rounds division and multiplication correctly and contracts none of them here).
 *
 * Formats (docs/QUANTIZED.md):
 *   fp8    e4m3 [N][K], scale[n] = max|row n| / 448 (1 for an all-zero row); w = e4m3 · scale.
 *   nvfp4  e2m1 [N][K/2] (byte b of a row: element 2b low nibble, 2b+1 high), e4m3 block scales
 *          [N][K/16], one fp32 tensor scale = amax / (6 · 448) (1 if amax is 0);
 *          w = e2m1 · block scale · tensor scale. */
#ifndef HM_WQUANT_H
#define HM_WQUANT_H

#include <stddef.h>
#include <stdint.h>

/* e4m3 (OCP FP8, "fn": no infinities, 0x7F / 0xFF NaN) of f: round to nearest even, finite values
 * beyond ±448 saturate to ±448, NaN -> 0x7F. */
uint8_t wq_e4m3_from_f32(float f);
float wq_e4m3_to_f32(uint8_t b);
/* e2m1 code (sign bit 3) of v, |v| up to 6: round to nearest, ties to the even code, as the
 * device's to_e2m1; -0 and values that round to 0 give code 0. */
uint8_t wq_e2m1_from_f32(float v);
float wq_e2m1_to_f32(uint8_t c);

/* Largest |value| of n bf16 values. */
float wq_bf16_amax(const uint16_t *w, size_t n);

/* fp8 of the bf16 matrix w [N, K]: q [N*K] bytes, scale [N]. */
void wq_fp8_rows(const uint16_t *w, int64_t N, int64_t K, uint8_t *q, float *scale);

/* The NVFP4 tensor scale of a matrix whose largest |value| is amax (for a matrix the engine
 * stacks from several tensors, the amax over all of them). */
float wq_nvfp4_tensor_scale(float amax);
/* NVFP4 of the bf16 rows w [N, K] (K % 16 == 0) under tensor scale ts: vals [N*K/2] bytes,
 * bscale [N*K/16] e4m3 bytes. */
void wq_nvfp4_rows(const uint16_t *w, int64_t N, int64_t K, float ts, uint8_t *vals, uint8_t *bscale);

/* The CUDA decode GEMV's NVFP4 layout (kernels/gemv_quant.cu hmc_nvfp4_pack, the device twin): a
 * permutation of the 32 bits of each little-endian 4-byte word of the e2m1 values, so that the
 * kernel turns two of a word's elements into an f16 pair with one to three integer instructions
 * instead of four.  Element e of the word (bits 4e..4e+3 of the standard layout above; e = 4h + j,
 * h the half, j = 0..3) keeps its magnitude (bits 0..2 of the code) at bits 16h + 3j .. 16h + 3j + 2
 * and its sign at bit 16h + (j == 3 ? 15 : 14 - j).  nbytes: a multiple of 4 (the values only, not
 * the block scales that follow them). */
void wq_nvfp4_pack(uint8_t *vals, size_t nbytes);
void wq_nvfp4_unpack(uint8_t *vals, size_t nbytes);

#endif
