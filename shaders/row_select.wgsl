// The selection that select_lowest.wgsl and prune_rows.wgsl share (each writes {{ row_select }}
// where it goes): in one row of `cols` entries, the k lowest keys, with one workgroup; of the
// keys equal to the k-th, the lower columns are pruned first, or the higher ones where info[2]
// is 1 (the authors' `neuron` masks: NeuroAL's row step). An exact radix select finds the k-th
// smallest key over four 8-bit digits (rows may be far wider than workgroup memory); then a pass
// over the row hands each column's verdict to the shader. Only where some but not all of the
// keys equal to the k-th are pruned does that pass rank the ties by column, with a workgroup
// prefix sum (17 barriers per WG columns); scores of distinct values (the usual case) need no
// barrier there. The including shader binds `kth` (the count per row) and `info` (rows, cols,
// tie order first), and defines key_at(base, j), the key (key_of of the f32 score) of column j
// of the row starting at `base`, and write_at(base, j, pruned).

const WG: u32 = {{ workgroup_size }}u;
// Whether each digit's bin is found in two levels (kernels.rs, `Walk`).
const TWO_LEVEL_WALK: bool = {{ two_level_walk }};
// Copies of the first digit's histogram (kernels.rs, `Select`): the first digit sees every key
// of the row, and a row's scores share a few exponents, so its counts crowd into a few bins;
// invocation i counts into copy i % COPIES, and the copies are then summed into the first.
const COPIES: u32 = {{ hist_copies }}u;

var<workgroup> hist: array<atomic<u32>, {{ hist_len }}>;
var<workgroup> select_u32: array<u32, 3>;
var<workgroup> bin_groups: array<u32, 16>;
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

// Calls write_at(base, j, pruned) for every column j of the row: pruned for the k lowest keys,
// of equal keys the higher columns first where `later_first`. Every invocation of the workgroup
// calls it (it holds barriers); `cols` and `later_first` are workgroup-uniform.
fn select_row(base: u32, cols: u32, k: u32, later_first: bool, lid: u32) {
    // Radix select: after four digits, `prefix` is the key of the k-th smallest score and
    // `remaining` how many scores equal to it are pruned.
    var prefix = 0u;
    var digits_mask = 0u;
    var remaining = k;
    for (var digit = 0u; digit < 4u; digit++) {
        let shift = 24u - 8u * digit;
        let copies = select(1u, COPIES, digit == 0u);
        for (var c = 0u; c < copies; c++) {
            atomicStore(&hist[c * 256u + lid], 0u);
        }
        workgroupBarrier();
        let own = (lid % copies) * 256u;
        for (var j = lid; j < cols; j += WG) {
            let key = key_at(base, j);
            if ((key & digits_mask) == prefix) {
                atomicAdd(&hist[own + ((key >> shift) & 255u)], 1u);
            }
        }
        workgroupBarrier();
        if (copies > 1u) {
            var sum = atomicLoad(&hist[lid]);
            for (var c = 1u; c < copies; c++) {
                sum += atomicLoad(&hist[c * 256u + lid]);
            }
            atomicStore(&hist[lid], sum);
            workgroupBarrier();
        }
        // The two-level walk: 16 invocations sum 16 bins each, so that the walk below starts at
        // the group of bins that reaches `remaining` and stops within it.
        if (TWO_LEVEL_WALK) {
            if (lid < 16u) {
                var sum = 0u;
                for (var b = lid * 16u; b < lid * 16u + 16u; b++) {
                    sum += atomicLoad(&hist[b]);
                }
                bin_groups[lid] = sum;
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            var cum = 0u;
            var first = 0u;
            if (TWO_LEVEL_WALK) {
                for (var g = 0u; g < 15u; g++) {
                    let c = bin_groups[g];
                    if (cum + c >= remaining) {
                        break;
                    }
                    cum += c;
                    first += 16u;
                }
            }
            var sel = 255u;
            var left = remaining;
            for (var b = first; b < 256u; b++) {
                let c = atomicLoad(&hist[b]);
                if (cum + c >= remaining) {
                    sel = b;
                    left = remaining - cum;
                    break;
                }
                cum += c;
            }
            select_u32[0] = sel;
            select_u32[1] = left;
            // After the last digit: how many keys equal the k-th.
            select_u32[2] = atomicLoad(&hist[sel]);
        }
        let sel = workgroupUniformLoad(&select_u32[0]);
        remaining = workgroupUniformLoad(&select_u32[1]);
        prefix = prefix | (sel << shift);
        digits_mask = digits_mask | (255u << shift);
    }

    // Every key equal to the k-th is pruned (or none is, for k = 0): no ranking of ties.
    let equal = workgroupUniformLoad(&select_u32[2]);
    if (remaining == equal) {
        for (var j = lid; j < cols; j += WG) {
            write_at(base, j, k > 0u && key_at(base, j) <= prefix);
        }
        return;
    }
    // Pruned: below the k-th key, or equal to it and among the first `remaining` such columns
    // (the last `remaining` where `later_first`: those whose rank passes the `equal - remaining`
    // ties kept).
    let kept_ties = equal - remaining;
    var ties_before = 0u;
    for (var start = 0u; start < cols; start += WG) {
        let j = start + lid;
        var key = 0u;
        var is_tie = 0u;
        if (j < cols) {
            key = key_at(base, j);
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
            let tie_pruned = select(rank <= remaining, rank > kept_ties, later_first);
            write_at(base, j, k > 0u && (key < prefix || (is_tie == 1u && tie_pruned)));
        }
        ties_before = ties_before + workgroupUniformLoad(&flags[WG - 1u]);
    }
}

// The whole of a shader's work on the row of this workgroup (one workgroup per row, folded
// into two dimensions): select_row over it, with its count clamped to the row's width.
fn select_workgroup_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let row_id = wid.y * nwg.x + wid.x;
    if (lid == 0u) {
        select_u32[0] = info[0];
        select_u32[1] = info[1];
        select_u32[2] = info[2];
    }
    let rows = workgroupUniformLoad(&select_u32[0]);
    let cols = workgroupUniformLoad(&select_u32[1]);
    let later_first = workgroupUniformLoad(&select_u32[2]) == 1u;
    if (row_id >= rows) {
        return;
    }
    select_row(row_id * cols, cols, min(kth[row_id], cols), later_first, lid);
}
