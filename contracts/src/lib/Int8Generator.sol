// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Int8Generator
/// @notice The Solidity twin of node/compute/workloads/generator.py: splitmix64 evaluated at a counter, so any
///         single int8 input element of a seeded matmul-int8 job can be recomputed on chain without
///         materialising the matrices. Both sides are pinned by contracts/test/vectors/int8_generator.json.
/// @dev    element(seed, tag, row, col, cols): counter = tag * 2^56 + row * cols + col;
///         z = seed + (counter + 1) * GAMMA (mod 2^64); z = (z ^ z >> 30) * MUL1; z = (z ^ z >> 27) * MUL2;
///         z ^= z >> 31; the low byte as two's complement. Every product is masked back to 64 bits before
///         the next right shift, which is all it takes to run uint64 arithmetic in 256-bit words.
library Int8Generator {
    uint256 internal constant GAMMA = 0x9E3779B97F4A7C15;
    uint256 internal constant MUL1 = 0xBF58476D1CE4E5B9;
    uint256 internal constant MUL2 = 0x94D049BB133111EB;
    uint256 internal constant MASK64 = 0xffffffffffffffff;
    uint256 internal constant TAG_A = 1;
    uint256 internal constant TAG_B = 2;

    /// @notice One generated element in [-128, 127].
    function element(uint64 seed, uint256 tag, uint256 row, uint256 col, uint256 cols)
        internal
        pure
        returns (int256 v)
    {
        uint256 z;
        unchecked {
            uint256 counter = ((tag << 56) + row * cols + col) & MASK64;
            z = (uint256(seed) + ((counter + 1) & MASK64) * GAMMA) & MASK64;
        }
        assembly ("memory-safe") {
            z := and(mul(xor(z, shr(30, z)), MUL1), MASK64)
            z := and(mul(xor(z, shr(27, z)), MUL2), MASK64)
            v := signextend(0, xor(z, shr(31, z)))
        }
    }

    /// @notice C[i,j] = sum_t A[i,t] * B[t,j] of the seeded job (A is m x k with tag 1, B is k x n with tag 2).
    /// @dev Two generator states share one word, A's in bits 0..63 and B's in bits 128..191, so every shift,
    ///      xor and multiply serves both elements: the gap bits 64..127 absorb what a shift or a carry spills,
    ///      and a mask clears them before each multiply (a lane's 64 x 64-bit product fits in 128 bits, so the
    ///      lanes never mix). The final byte needs bits 0..38 of a lane only, so no mask is needed there. The
    ///      states advance incrementally: A's counter grows by 1 per step and B's by n, i.e. by GAMMA and
    ///      n * GAMMA. About 150 gas per step (forge: 1024 steps cost ~340k gas of execution).
    function seededDot(uint64 seed, uint256 i, uint256 j, uint256 k, uint256 n) internal pure returns (int256 acc) {
        uint256 w;
        uint256 step;
        unchecked {
            uint256 za = (uint256(seed) + (((TAG_A << 56) + i * k + 1) & MASK64) * GAMMA) & MASK64;
            uint256 zb = (uint256(seed) + (((TAG_B << 56) + j + 1) & MASK64) * GAMMA) & MASK64;
            w = za | (zb << 128);
            step = GAMMA | (((n * GAMMA) & MASK64) << 128);
        }
        uint256 lanes = MASK64 | (MASK64 << 128);
        assembly ("memory-safe") {
            let z
            let t := 0
            // four steps per iteration: the loop's own bookkeeping is a fifth of a step's cost
            for { let whole := sub(k, mod(k, 4)) } lt(t, whole) { t := add(t, 4) } {
                z := and(mul(and(xor(w, shr(30, w)), lanes), MUL1), lanes)
                z := mul(and(xor(z, shr(27, z)), lanes), MUL2)
                z := xor(z, shr(31, z))
                acc := add(acc, mul(signextend(0, z), signextend(0, shr(128, z))))
                w := and(add(w, step), lanes)
                z := and(mul(and(xor(w, shr(30, w)), lanes), MUL1), lanes)
                z := mul(and(xor(z, shr(27, z)), lanes), MUL2)
                z := xor(z, shr(31, z))
                acc := add(acc, mul(signextend(0, z), signextend(0, shr(128, z))))
                w := and(add(w, step), lanes)
                z := and(mul(and(xor(w, shr(30, w)), lanes), MUL1), lanes)
                z := mul(and(xor(z, shr(27, z)), lanes), MUL2)
                z := xor(z, shr(31, z))
                acc := add(acc, mul(signextend(0, z), signextend(0, shr(128, z))))
                w := and(add(w, step), lanes)
                z := and(mul(and(xor(w, shr(30, w)), lanes), MUL1), lanes)
                z := mul(and(xor(z, shr(27, z)), lanes), MUL2)
                z := xor(z, shr(31, z))
                acc := add(acc, mul(signextend(0, z), signextend(0, shr(128, z))))
                w := and(add(w, step), lanes)
            }
            for {} lt(t, k) { t := add(t, 1) } {
                z := and(mul(and(xor(w, shr(30, w)), lanes), MUL1), lanes)
                z := mul(and(xor(z, shr(27, z)), lanes), MUL2)
                z := xor(z, shr(31, z))
                acc := add(acc, mul(signextend(0, z), signextend(0, shr(128, z))))
                w := and(add(w, step), lanes)
            }
        }
    }

    /// @notice sum_t int8(row[t]) * int8(col[t]) over two equally long byte strings in calldata.
    function bytesDot(bytes calldata row, bytes calldata col) internal pure returns (int256 acc) {
        assembly ("memory-safe") {
            let r := row.offset
            let c := col.offset
            for { let t := 0 } lt(t, row.length) { t := add(t, 1) } {
                acc := add(
                    acc,
                    mul(
                        signextend(0, shr(248, calldataload(add(r, t)))),
                        signextend(0, shr(248, calldataload(add(c, t))))
                    )
                )
            }
        }
    }
}
