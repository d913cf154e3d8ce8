// Accumulates, per input channel j of x [n, cols], the sum of squares and the sum over the n
// rows (tokens): sumsq_out[j] = sumsq_in[j] + Σ x², sum_out[j] = sum_in[j] + Σ x. One thread per
// channel: adjacent threads read adjacent channels of a row, so every row is read coalesced.
// Outputs are fresh buffers: burn tensors may share storage, so nothing is updated in place.

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> sumsq_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> sum_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> sumsq_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> sum_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> info: array<u32>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = info[0];
    let cols = info[1];
    let j = gid.x;
    if (j >= cols) {
        return;
    }
    var sq = 0.0;
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        let v = x[i * cols + j];
        sq += v * v;
        s += v;
    }
    sumsq_out[j] = sumsq_in[j] + sq;
    sum_out[j] = sum_in[j] + s;
}
