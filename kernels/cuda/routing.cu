// MoE routing kernels for cascade.kernels.cupy_backend (compiled at runtime by CuPy/NVRTC; also compile-checked
// with `nvcc -arch=sm_90 --ptx` by tests/test_kernels.py). No headers: NVRTC has no standard library.
//
// Same contract as the torch path (kernels/gating.py, kernels/dispatch.py), bit for bit on ids and indices:
//   topk_gating      one warp per token; selection order = (value desc, expert index asc)
//   dispatch_count   one warp per CHUNK of flat (token, slot) pairs: per-chunk expert histogram
//   dispatch_scan    one block: expert-major exclusive scan of the histograms -> segment bases, offsets,
//                    vLLM block layout (padded offsets, expert id per block)
//   dispatch_scatter one warp per chunk: stable rank inside the chunk (__match_any_sync) -> sorted position
// Everything is deterministic: the only atomics are shared-memory histogram increments, whose result does not
// depend on their order.

#define FULL_MASK 0xffffffffu
#define MAX_PER_LANE 8      // experts per lane: E <= 256
#define CHUNK 256           // pairs per warp in dispatch_count / dispatch_scatter
#define SCAN_THREADS 1024

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// (v, i) beats (ov, oi) if larger, or equal with a lower index
__device__ __forceinline__ void warp_argmax(float &v, int &i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, off);
        int oi = __shfl_xor_sync(FULL_MASK, i, off);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, off));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

// logits fp32 [T, E] -> ids int64 [T, k], weights fp32 [T, k]. score_mode 0 = sigmoid, 1 = softmax.
// Softmax without bias selects on the logits (same order, no rounding ties), like the torch path.
// Dynamic shared memory: (blockDim.x / 32) * E floats (used only when n_group > 1).
extern "C" __global__ void topk_gating(
    const float *__restrict__ logits, const float *__restrict__ bias, long long *__restrict__ out_ids,
    float *__restrict__ out_w, int T, int E, int k, int score_mode, int has_bias, int n_group, int topk_group,
    int normalize, float scaling)
{
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31;
    const int wib = threadIdx.x >> 5;
    const int t = blockIdx.x * (blockDim.x >> 5) + wib;
    if (t >= T) return;  // uniform per warp
    const float *row = logits + (long long)t * E;

    float sc[MAX_PER_LANE], ch[MAX_PER_LANE];
    float mx = neg_inf();
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) {
        int e = lane + 32 * j;
        float x = (e < E) ? row[e] : neg_inf();
        sc[j] = x;
        mx = fmaxf(mx, x);
    }
    if (score_mode == 1) {
        mx = warp_max(mx);
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; ++j) {
            int e = lane + 32 * j;
            float p = (e < E) ? expf(sc[j] - mx) : 0.f;
            ch[j] = sc[j];  // logit, the choice value when there is no bias
            sc[j] = p;
            s += p;
        }
        s = warp_sum(s);
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; ++j) sc[j] = sc[j] / s;
    } else {
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; ++j) {
            sc[j] = 1.0f / (1.0f + expf(-sc[j]));
            ch[j] = sc[j];
        }
    }
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; ++j) {
        int e = lane + 32 * j;
        if (e >= E) { ch[j] = neg_inf(); continue; }
        if (has_bias) ch[j] = sc[j] + bias[e];
    }

    if (n_group > 1) {
        // group score = top1 + top2 of the group's choice values; keep the topk_group best groups
        float *srow = smem + wib * E;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; ++j) { int e = lane + 32 * j; if (e < E) srow[e] = ch[j]; }
        __syncwarp();
        const int G = E / n_group;
        float gs = neg_inf();
        if (lane < n_group) {
            float a = neg_inf(), b = neg_inf();
            for (int q = 0; q < G; ++q) {
                float v = srow[lane * G + q];
                if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
            }
            gs = (G >= 2) ? a + b : a;
        }
        unsigned keep = 0u;
        for (int r = 0; r < topk_group; ++r) {
            float v = gs; int i = (lane < n_group) ? lane : 0x7fffffff;
            warp_argmax(v, i);
            keep |= 1u << i;
            if (lane == i) gs = neg_inf();
        }
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; ++j) {
            int e = lane + 32 * j;
            if (e < E && !((keep >> (e / G)) & 1u)) ch[j] = neg_inf();
        }
    }

    long long my_id = 0;
    float my_w = 0.f, wsum = 0.f;
    for (int r = 0; r < k; ++r) {
        float v = neg_inf(); int i = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; ++j) {
            int e = lane + 32 * j;
            if (e < E && (ch[j] > v || i == 0x7fffffff)) { v = ch[j]; i = e; }
        }
        warp_argmax(v, i);
        float w = 0.f;
        if ((i & 31) == lane) {
#pragma unroll
            for (int j = 0; j < MAX_PER_LANE; ++j) if (lane + 32 * j == i) { w = sc[j]; ch[j] = neg_inf(); }
        }
        w = __shfl_sync(FULL_MASK, w, i & 31);
        wsum += w;
        if (lane == r) { my_id = i; my_w = w; }
    }
    if (lane < k) {
        if (normalize) my_w = my_w / (wsum + 1e-20f);
        out_ids[(long long)t * k + lane] = my_id;
        out_w[(long long)t * k + lane] = my_w * scaling;
    }
}

__device__ __forceinline__ int expert_key(const long long *ids, long long f, int E) {
    long long e = ids[f];
    return (e < 0) ? E : (int)e;  // padding (-1) -> bucket E, after every real expert
}

// counts[(E+1) * nchunks], expert-major: counts[e * nchunks + c]. Dynamic smem: warps_per_block * (E+1) ints.
extern "C" __global__ void dispatch_count(const long long *__restrict__ ids, long long N, int E, int nchunks,
                                          long long *__restrict__ counts)
{
    extern __shared__ int hist_all[];
    const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    const int c = blockIdx.x * (blockDim.x >> 5) + wib;
    if (c >= nchunks) return;
    int *hist = hist_all + wib * (E + 1);
    for (int e = lane; e <= E; e += 32) hist[e] = 0;
    __syncwarp();
    const long long start = (long long)c * CHUNK;
    for (int q = lane; q < CHUNK; q += 32) {
        long long f = start + q;
        if (f < N) atomicAdd(&hist[expert_key(ids, f, E)], 1);
    }
    __syncwarp();
    for (int e = lane; e <= E; e += 32) counts[(long long)e * nchunks + c] = hist[e];
}

// exclusive scan of x[0..m) in place by one block of SCAN_THREADS threads; returns the total to every thread
__device__ long long block_exclusive_scan(long long *x, long long m, long long *warp_tot) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const long long per = (m + SCAN_THREADS - 1) / SCAN_THREADS;
    const long long lo = tid * per, hi = (lo + per < m) ? lo + per : m;
    long long local = 0;
    for (long long q = lo; q < hi; ++q) local += x[q];
    long long incl = local;  // inclusive warp scan of the per-thread sums
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        long long o = __shfl_up_sync(FULL_MASK, incl, off);
        if (lane >= off) incl += o;
    }
    if (lane == 31) warp_tot[w] = incl;
    __syncthreads();
    if (w == 0) {
        long long v = warp_tot[lane], vi = v;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            long long o = __shfl_up_sync(FULL_MASK, vi, off);
            if (lane >= off) vi += o;
        }
        warp_tot[lane] = vi - v;  // exclusive prefix of warp totals
        if (lane == 31) warp_tot[32] = vi;
    }
    __syncthreads();
    long long run = warp_tot[w] + incl - local;
    for (long long q = lo; q < hi; ++q) { long long v = x[q]; x[q] = run; run += v; }
    long long total = warp_tot[32];
    __syncthreads();  // warp_tot is reused by the next call
    return total;
}

// One block of SCAN_THREADS. base[(E+1)*nchunks] (in: counts, out: exclusive scan = sorted position of the
// first pair of expert e in chunk c). Writes expert_counts[E], offsets[E+1]; with block_size > 0 also
// padded_offsets[E+1], block_expert_ids[nblocks] and num_post_padded[1] (vLLM layout).
extern "C" __global__ void dispatch_scan(long long *__restrict__ base, int E, int nchunks,
                                         long long *__restrict__ expert_counts, long long *__restrict__ offsets,
                                         int block_size, long long *__restrict__ padded_offsets,
                                         int *__restrict__ block_expert_ids, int nblocks,
                                         int *__restrict__ num_post_padded)
{
    __shared__ long long warp_tot[33];
    __shared__ long long pad[SCAN_THREADS + 1];
    const int tid = threadIdx.x;
    block_exclusive_scan(base, (long long)(E + 1) * nchunks, warp_tot);
    __syncthreads();
    for (int e = tid; e <= E; e += SCAN_THREADS) offsets[e] = base[(long long)e * nchunks];
    __syncthreads();
    for (int e = tid; e < E; e += SCAN_THREADS) expert_counts[e] = offsets[e + 1] - offsets[e];
    if (block_size <= 0) return;
    // E <= SCAN_THREADS (checked on the host): one expert per thread
    long long cnt = (tid < E) ? offsets[tid + 1] - offsets[tid] : 0;
    pad[tid] = (cnt + block_size - 1) / block_size * block_size;
    __syncthreads();
    long long total = block_exclusive_scan(pad, SCAN_THREADS, warp_tot);
    if (tid <= E) padded_offsets[tid] = (tid < E) ? pad[tid] : total;
    if (tid == 0) num_post_padded[0] = (int)total;
    if (tid < E) {
        for (long long b = pad[tid] / block_size; b < (pad[tid] + (cnt + block_size - 1) / block_size * block_size) / block_size; ++b)
            block_expert_ids[b] = tid;
    }
    for (long long b = total / block_size + tid; b < nblocks; b += SCAN_THREADS) block_expert_ids[b] = -1;
}

// Stable scatter: pair f of chunk c with expert e goes to base[e*nchunks + c] + (its rank among the chunk's
// earlier pairs of expert e). Dynamic smem: warps_per_block * (E+1) ints (running counters).
extern "C" __global__ void dispatch_scatter(const long long *__restrict__ ids, long long N, int E, int k, int nchunks,
                                            const long long *__restrict__ base, const long long *__restrict__ offsets,
                                            long long *__restrict__ order, long long *__restrict__ inverse,
                                            long long *__restrict__ token_ids, long long *__restrict__ sorted_expert,
                                            int block_size, const long long *__restrict__ padded_offsets,
                                            int *__restrict__ sorted_token_ids)
{
    extern __shared__ int run_all[];
    const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    const int c = blockIdx.x * (blockDim.x >> 5) + wib;
    if (c >= nchunks) return;
    int *run = run_all + wib * (E + 1);
    for (int e = lane; e <= E; e += 32) run[e] = 0;
    __syncwarp();
    const unsigned lt = (1u << lane) - 1u;
    const long long start = (long long)c * CHUNK;
    for (int q0 = 0; q0 < CHUNK; q0 += 32) {
        long long f = start + q0 + lane;
        bool in = f < N;
        int e = in ? expert_key(ids, f, E) : -1 - lane;  // out-of-range lanes: unique keys, ignored
        unsigned peers = __match_any_sync(FULL_MASK, e);
        int rank = in ? run[e] + __popc(peers & lt) : 0;
        __syncwarp();
        if (in && (__ffs(peers) - 1) == lane) run[e] += __popc(peers);
        __syncwarp();
        if (in) {
            long long pos = base[(long long)e * nchunks + c] + rank;
            order[pos] = f;
            inverse[f] = pos;
            token_ids[pos] = f / k;
            sorted_expert[pos] = (e == E) ? -1 : e;
            if (block_size > 0 && e < E) sorted_token_ids[padded_offsets[e] + pos - offsets[e]] = (int)f;
        }
    }
}
