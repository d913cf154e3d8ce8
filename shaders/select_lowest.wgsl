// In each row of a [rows, cols] score matrix, marks the k[row] lowest scores with 1.0 (ties:
// lower column first) and the rest with 0.0. One workgroup per row: an exact radix select of the
// k-th smallest key over four 8-bit digits (rows may be far wider than workgroup memory), then a
// marking pass that ranks the ties by column with a workgroup prefix sum.

@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> kth: array<u32>;
@group(0) @binding(2) var<storage, read_write> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const WG: u32 = {{ workgroup_size }}u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> shared_u32: array<u32, 4>;
var<workgroup> flags: array<u32, {{ workgroup_size }}>;

// Order-preserving map of f32 to u32; +0 and -0 share a key, as they compare equal.
fn key_of(x: f32) -> u32 {
    var bits = bitcast<u32>(x);
    if (x == 0.0) {
        bits = 0u;
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
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
    let base = row_id * cols;
    let k = min(kth[row_id], cols);

    // Radix select: after four digits, `prefix` is the key of the k-th smallest score and
    // `remaining` how many scores equal to it are pruned.
    var prefix = 0u;
    var digits_mask = 0u;
    var remaining = k;
    for (var digit = 0u; digit < 4u; digit++) {
        let shift = 24u - 8u * digit;
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var j = lid; j < cols; j += WG) {
            let key = key_of(scores[base + j]);
            if ((key & digits_mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var cum = 0u;
            var sel = 255u;
            var left = remaining;
            for (var b = 0u; b < 256u; b++) {
                let c = atomicLoad(&hist[b]);
                if (cum + c >= remaining) {
                    sel = b;
                    left = remaining - cum;
                    break;
                }
                cum += c;
            }
            shared_u32[2] = sel;
            shared_u32[3] = left;
        }
        let sel = workgroupUniformLoad(&shared_u32[2]);
        remaining = workgroupUniformLoad(&shared_u32[3]);
        prefix = prefix | (sel << shift);
        digits_mask = digits_mask | (255u << shift);
    }

    // Mark: below the k-th key, or equal to it and among the first `remaining` such columns.
    var ties_before = 0u;
    for (var start = 0u; start < cols; start += WG) {
        let j = start + lid;
        var key = 0u;
        var is_tie = 0u;
        if (j < cols) {
            key = key_of(scores[base + j]);
            if (key == prefix) {
                is_tie = 1u;
            }
        }
        flags[lid] = is_tie;
        workgroupBarrier();
        // Inclusive prefix sum of the tie flags (Hillis-Steele).
        for (var off = 1u; off < WG; off = off * 2u) {
            var add = 0u;
            if (lid >= off) {
                add = flags[lid - off];
            }
            workgroupBarrier();
            flags[lid] = flags[lid] + add;
            workgroupBarrier();
        }
        let rank = ties_before + flags[lid];
        if (j < cols) {
            var pruned = 0.0;
            if (k > 0u && (key < prefix || (is_tie == 1u && rank <= remaining))) {
                pruned = 1.0;
            }
            mask[base + j] = pruned;
        }
        ties_before = ties_before + workgroupUniformLoad(&flags[WG - 1u]);
    }
}
