// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @dev The forge cheatcodes the suite uses. npm's `forge-std` is an unofficial 2022 snapshot whose Test.sol
///      needs ds-test (not published on npm), so the project keeps this small base over forge's own
///      cheatcode contract instead; assertions are forge's assertion cheatcodes, which revert with
///      "left != right" style messages.
interface Vm {
    function warp(uint256) external;
    function roll(uint256) external;
    function prank(address) external;
    function startPrank(address) external;
    function stopPrank() external;
    function deal(address, uint256) external;
    function addr(uint256) external pure returns (address);
    function sign(uint256, bytes32) external pure returns (uint8, bytes32, bytes32);
    function label(address, string calldata) external;
    function assume(bool) external pure;
    function expectRevert() external;
    function expectRevert(bytes4) external;
    function expectRevert(bytes calldata) external;
    function expectEmit() external;
    function expectEmit(address) external;
    function chainId(uint256) external;
    function snapshotGasLastCall(string calldata) external returns (uint256);
    function assertTrue(bool, string calldata) external pure;
    function assertFalse(bool, string calldata) external pure;
    function assertEq(uint256, uint256, string calldata) external pure;
    function assertEq(address, address, string calldata) external pure;
    function assertEq(bytes32, bytes32, string calldata) external pure;
    function assertEq(bool, bool, string calldata) external pure;
    function assertEq(string calldata, string calldata, string calldata) external pure;
    function assertLe(uint256, uint256, string calldata) external pure;
    function assertGe(uint256, uint256, string calldata) external pure;
    function assertEq(int256, int256, string calldata) external pure;
    function readFile(string calldata) external view returns (string memory);
    function projectRoot() external view returns (string memory);
    function parseJsonUintArray(string calldata, string calldata) external pure returns (uint256[] memory);
    function parseJsonIntArray(string calldata, string calldata) external pure returns (int256[] memory);
}

struct FuzzSelector {
    address addr;
    bytes4[] selectors;
}

abstract contract Test {
    /// @dev Shown by `forge test -vv`: how the gas tests report their figures.
    event log_named_uint(string key, uint256 val);

    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    address[] private _targets;
    FuzzSelector[] private _targetSelectors;

    function assertTrue(bool c, string memory why) internal pure {
        vm.assertTrue(c, why);
    }

    function assertFalse(bool c, string memory why) internal pure {
        vm.assertFalse(c, why);
    }

    function assertEq(uint256 a, uint256 b, string memory why) internal pure {
        vm.assertEq(a, b, why);
    }

    function assertEq(address a, address b, string memory why) internal pure {
        vm.assertEq(a, b, why);
    }

    function assertEq(bytes32 a, bytes32 b, string memory why) internal pure {
        vm.assertEq(a, b, why);
    }

    function assertEq(bool a, bool b, string memory why) internal pure {
        vm.assertEq(a, b, why);
    }

    function assertEq(string memory a, string memory b, string memory why) internal pure {
        vm.assertEq(a, b, why);
    }

    function assertEq(int256 a, int256 b, string memory why) internal pure {
        vm.assertEq(a, b, why);
    }

    function assertTrue(bool c) internal pure {
        vm.assertTrue(c, "");
    }

    function assertFalse(bool c) internal pure {
        vm.assertFalse(c, "");
    }

    function assertEq(uint256 a, uint256 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(int256 a, int256 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(address a, address b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(bytes32 a, bytes32 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(string memory a, string memory b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertGe(uint256 a, uint256 b) internal pure {
        vm.assertGe(a, b, "");
    }

    function assertLe(uint256 a, uint256 b, string memory why) internal pure {
        vm.assertLe(a, b, why);
    }

    function assertGe(uint256 a, uint256 b, string memory why) internal pure {
        vm.assertGe(a, b, why);
    }

    /// @dev Maps any fuzzed x into [lo, hi] without discarding runs.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (x >= lo && x <= hi) return x;
        uint256 span = hi - lo;
        if (span == type(uint256).max) return x;
        return lo + (x % (span + 1));
    }

    // Invariant-testing hooks that forge reads from the test contract.
    function targetContract(address target) internal {
        _targets.push(target);
    }

    function targetSelector(FuzzSelector memory s) internal {
        _targetSelectors.push(s);
    }

    function targetContracts() public view returns (address[] memory) {
        return _targets;
    }

    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }
}
