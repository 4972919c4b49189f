// Pruning kernels of kernels/src/cuda/mod.rs, compiled at run time with NVRTC (no nvcc at
// build time). Same results as the CPU kernels, bit for bit:
// - order: lowest score first, equal scores by lower column index, -0.0 == +0.0;
// - masks: 1 = kept, 0 = pruned; row-major, each row padded to whole 64-bit words, column c
//   of a row is bit c % 64 of word c / 64; padding bits 0.
// Column counts are < 2^32 (checked by the host).

typedef unsigned int u32;
typedef unsigned long long u64;

// Unsigned key whose order is the numeric order of s (-0.0 maps like +0.0).
__device__ __forceinline__ u32 order_key(float s) {
    u32 b = __float_as_uint(s + 0.0f);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

// out[r, c] = |w[r, c]| * sqrt(sq[c]), all f32, contiguous.
extern "C" __global__ void wanda_scores(const float* w, const float* sq, float* out, u64 rows,
                                        u64 cols) {
    const u64 n = rows * cols;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        out[i] = fabsf(w[i]) * sqrtf(sq[i % cols]);
    }
}

// N:M mask, one thread per 64-bit mask word: of each group of m consecutive columns the n
// lowest (score, column) are pruned. A weight is kept iff at least n of its group precede it.
extern "C" __global__ void nm_mask(const float* s, u64* bits, u64 rows, u64 cols, u32 n, u32 m,
                                   int* nan_flag) {
    const u64 wpr = (cols + 63) / 64;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < rows * wpr;
         i += (u64)gridDim.x * blockDim.x) {
        const float* row = s + (i / wpr) * cols;
        const u64 c0 = (i % wpr) * 64;
        u64 word = 0;
        for (u32 j = 0; j < 64 && c0 + j < cols; ++j) {
            const u64 c = c0 + j;
            if (isnan(row[c])) atomicOr(nan_flag, 1);
            const u32 k = order_key(row[c]);
            const u64 g = c - c % m;
            u32 before = 0;
            for (u64 o = g; o < g + m; ++o) {
                const u32 ko = order_key(row[o]);
                before += (ko < k) || (ko == k && o < c);
            }
            if (before >= n) word |= 1ull << j;
        }
        bits[i] = word;
    }
}

#define BINS 256
#define MAX_THREADS 1024

// Incremental per-row pruning, one block per row (blockDim <= MAX_THREADS): prunes the
// lowest-keyed active weights until the row has per_row pruned (rows already at or above
// per_row are copied). Radix select of the need-th smallest 32-bit score key T, 8 bits a
// pass; then a sweep prunes every active weight with key < T and the lowest-column ones with
// key == T, as many as the select left over.
extern "C" __global__ void prune_rows(const float* s, const u64* in_bits, u64* out_bits, u64 cols,
                                      u64 per_row, int* nan_flag) {
    __shared__ u32 hist[BINS];
    __shared__ u32 scan[MAX_THREADS];
    __shared__ unsigned long long active;
    __shared__ u64 s_rank;
    __shared__ u32 s_prefix;
    __shared__ u32 ties_before;

    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u64 wpr = (cols + 63) / 64;
    const float* row = s + blockIdx.x * cols;
    const u64* in = in_bits + blockIdx.x * wpr;
    u64* out = out_bits + blockIdx.x * wpr;

    if (tid == 0) {
        active = 0;
        ties_before = 0;
    }
    __syncthreads();
    unsigned long long local = 0;
    for (u64 w = tid; w < wpr; w += nt) local += __popcll(in[w]);
    atomicAdd(&active, local);
    for (u64 c = tid; c < cols; c += nt)
        if (isnan(row[c])) atomicOr(nan_flag, 1);
    __syncthreads();

    const u64 pruned = cols - active;
    if (per_row <= pruned) {
        for (u64 w = tid; w < wpr; w += nt) out[w] = in[w];
        return;
    }

    // rank: 1-based rank of the wanted key among active keys matching prefix in the bits so far.
    u64 rank = per_row - pruned;
    u32 prefix = 0, prefix_mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 b = tid; b < BINS; b += nt) hist[b] = 0;
        __syncthreads();
        for (u64 c = tid; c < cols; c += nt) {
            if ((in[c >> 6] >> (c & 63)) & 1) {
                const u32 key = order_key(row[c]);
                if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
            }
        }
        __syncthreads();
        if (tid == 0) {
            u64 below = 0;
            u32 d = 0;
            while (below + hist[d] < rank) below += hist[d++];
            s_rank = rank - below;
            s_prefix = prefix | (d << shift);
        }
        __syncthreads();
        rank = s_rank;
        prefix = s_prefix;
        prefix_mask |= 255u << shift;
        __syncthreads();
    }

    // prefix is now T; prune all active keys < T and the first `rank` keys == T by column.
    for (u64 base = 0; base < wpr; base += nt) {
        const u64 w = base + tid;
        u64 keep = 0, ties = 0;
        if (w < wpr) {
            keep = in[w];
            for (u32 j = 0; j < 64 && w * 64 + j < cols; ++j) {
                if (!((keep >> j) & 1)) continue;
                const u32 key = order_key(row[w * 64 + j]);
                if (key < prefix) keep &= ~(1ull << j);
                else if (key == prefix) ties |= 1ull << j;
            }
        }
        scan[tid] = __popcll(ties);
        __syncthreads();
        if (tid == 0) {
            u32 acc = ties_before;
            for (u32 t = 0; t < nt; ++t) {
                const u32 v = scan[t];
                scan[t] = acc;
                acc += v;
            }
            ties_before = acc;
        }
        __syncthreads();
        if (w < wpr) {
            for (u64 before = scan[tid]; ties != 0 && before < rank; ++before) {
                keep &= ~(ties & (~ties + 1));  // lowest tie bit
                ties &= ties - 1;
            }
            out[w] = keep;
        }
        __syncthreads();
    }
}
