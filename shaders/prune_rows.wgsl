// Magnitude or Wanda pruning of each row of a weight w [rows, cols] in one shader: the score of
// w[r, j] is |w| (magnitude) or |w| * sqrt(scaler[j]) (Wanda), recomputed wherever it is read
// and never stored; the k[r] lowest scores of row r (ties: lower column first) are zeroed in
// `out` and marked 1.0 in `mask` (the rest 0.0). The arithmetic is that of score.wgsl, then
// select_lowest.wgsl, then apply_mask.wgsl, which move a score matrix and a mask through memory
// between three launches. `w` and `out` are in the compute dtype ({{ elem }}), read and
// written as they are stored; scores are f32. One workgroup per row: an exact radix select of
// the k-th smallest key over four 8-bit digits, then a pass that ranks the ties by column with a
// workgroup prefix sum and writes the row.
{{ enable }}
@group(0) @binding(0) var<storage, read_write> w: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> scaler: array<f32>;
@group(0) @binding(2) var<storage, read_write> kth: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> info: array<u32>;

const WG: u32 = {{ workgroup_size }}u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> shared_u32: array<u32, 5>;
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

// The score of entry `i` (column `j`), as score.wgsl computes it.
fn score_at(i: u32, j: u32, use_scaler: u32) -> f32 {
    var s = abs(f32(w[i]));
    if (use_scaler == 1u) {
        s = s * sqrt(scaler[j]);
    }
    return s;
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
        shared_u32[4] = info[2];
    }
    let rows = workgroupUniformLoad(&shared_u32[0]);
    let cols = workgroupUniformLoad(&shared_u32[1]);
    let use_scaler = workgroupUniformLoad(&shared_u32[4]);
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
            let key = key_of(score_at(base + j, j, use_scaler));
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

    // Write: pruned below the k-th key, or equal to it and among the first `remaining` such
    // columns.
    var ties_before = 0u;
    for (var start = 0u; start < cols; start += WG) {
        let j = start + lid;
        var key = 0u;
        var is_tie = 0u;
        if (j < cols) {
            key = key_of(score_at(base + j, j, use_scaler));
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
            let pruned = k > 0u && (key < prefix || (is_tie == 1u && rank <= remaining));
            if (pruned) {
                out[base + j] = {{ elem }}(0.0);
                mask[base + j] = 1.0;
            } else {
                out[base + j] = w[base + j];
                mask[base + j] = 0.0;
            }
        }
        ties_before = ties_before + workgroupUniformLoad(&flags[WG - 1u]);
    }
}
