// Partial input statistics of x [n, cols] per input channel j, over one slice of rows:
// sumsq_part[s, j] = Σ x² and sum_part[s, j] = Σ x over rows s·R .. min((s + 1)·R, n), R = info[2].
// Workgroups tile channel blocks (x) by row slices (y): one thread per channel walking every row
// of a 4,096-token chunk kept a few dozen workgroups busy on a GPU with thousands of slots.
// Adjacent threads read adjacent channels of a row, so every row is read coalesced. The caller
// adds the slices up; outputs are fresh buffers (burn tensors may share storage). x is read in
// the compute dtype ({{ elem }}); the sums are f32.
{{ enable }}
@group(0) @binding(0) var<storage, read_write> x: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> sumsq_part: array<f32>;
@group(0) @binding(2) var<storage, read_write> sum_part: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let n = info[0];
    let cols = info[1];
    let rows_per_slice = info[2];
    let j = gid.x;
    if (j >= cols) {
        return;
    }
    let slice = wid.y;
    let start = slice * rows_per_slice;
    let end = min(start + rows_per_slice, n);
    var sq = 0.0;
    var s = 0.0;
    for (var i = start; i < end; i++) {
        let v = f32(x[i * cols + j]);
        sq += v * v;
        s += v;
    }
    sumsq_part[slice * cols + j] = sq;
    sum_part[slice * cols + j] = s;
}
