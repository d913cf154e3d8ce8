// In each row of a [rows, cols] score matrix, marks the k[row] lowest scores with 1.0 (ties:
// lower column first) and the rest with 0.0: one workgroup per row, with the selection of
// row_select.wgsl.

@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> kth: array<u32>;
@group(0) @binding(2) var<storage, read_write> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

var<workgroup> shared_u32: array<u32, 2>;

{{ row_select }}

fn key_at(base: u32, j: u32) -> u32 {
    return key_of(scores[base + j]);
}

fn write_at(base: u32, j: u32, pruned: bool) {
    mask[base + j] = select(0.0, 1.0, pruned);
}

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row_id = wid.y * nwg.x + wid.x;
    if (lid == 0u) {
        shared_u32[0] = info[0];
        shared_u32[1] = info[1];
    }
    let rows = workgroupUniformLoad(&shared_u32[0]);
    let cols = workgroupUniformLoad(&shared_u32[1]);
    if (row_id >= rows) {
        return;
    }
    select_row(row_id * cols, cols, min(kth[row_id], cols), lid);
}
