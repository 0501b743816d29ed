// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title EIP-3009: transfer with authorization (the part of USDC's interface the escrow uses)
/// @notice `receiveWithAuthorization` moves `value` from `from` to `to` on `from`'s EIP-712 signature; only `to`
///         may submit it, so a signature naming the escrow as `to` can only ever be used by the escrow.
interface IERC3009 {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
}
