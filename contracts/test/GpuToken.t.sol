// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {GpuToken} from "../src/GpuToken.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

contract GpuTokenTest is Test {
    GpuToken token;
    address owner = address(0xA11CE);

    function setUp() public {
        token = new GpuToken(owner);
    }

    function test_metadata() public view {
        assertEq(token.name(), "gpunode GPU Token", "name");
        assertEq(token.symbol(), "GPU", "symbol");
        assertEq(token.decimals(), 18, "decimals");
    }

    function test_onlyOwnerMints() public {
        vm.prank(owner);
        token.mint(address(7), 5);
        assertEq(token.balanceOf(address(7)), 5, "minted");
        vm.prank(address(7));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(7)));
        token.mint(address(7), 5);
    }

    function test_permitSetsAllowanceFromSignature() public {
        uint256 key = 0xA1;
        address holder = vm.addr(key);
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                holder,
                address(9),
                100,
                token.nonces(holder),
                deadline
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        token.permit(holder, address(9), 100, deadline, v, r, s);
        assertEq(token.allowance(holder, address(9)), 100, "allowance by permit");
        vm.expectRevert();
        token.permit(holder, address(9), 100, deadline, v, r, s); // nonce consumed
    }
}
