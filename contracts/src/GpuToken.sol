// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title GpuToken
/// @notice Payment and stake token for devnets and testnets. Production markets may use any ERC-20:
///         JobMarket and ProviderRegistry only ever talk to it through SafeERC20.
contract GpuToken is ERC20, ERC20Permit, Ownable {
    constructor(address initialOwner)
        ERC20("gpunode GPU Token", "GPU")
        ERC20Permit("gpunode GPU Token")
        Ownable(initialOwner)
    {}

    /// @notice Mint is owner-only: a test token with a faucet-like owner, not an economic asset.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
