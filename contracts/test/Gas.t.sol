// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {console} from "forge-std/Test.sol";
import {ClusterEscrow} from "../src/ClusterEscrow.sol";
import {BaseTest} from "./Base.t.sol";

/// @dev What a settlement batch costs, with the escrow's storage cold as in a real transaction (execution
///      gas only: add 21,000 and calldata, ~64 bytes per debit or credit). Bounds catch regressions.
contract SettleGasTest is BaseTest {
    /// Settles `payers` debits and `payees` credits; payees already hold earnings (the steady state).
    function _settleGas(uint256 payers, uint256 payees, bool unlimited) internal returns (uint256 gasUsed) {
        ClusterEscrow.Debit[] memory debits = new ClusterEscrow.Debit[](payers);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](payees);
        for (uint256 i; i < payers; ++i) {
            // casting to 'uint160' is safe because 0x10000 + i is far below 2^160
            // forge-lint: disable-next-line(unsafe-typecast)
            address payer = address(uint160(0x10000 + i));
            _deposit(payer, 100 * USDC);
            _authorize(payer, gateway, unlimited ? type(uint256).max : 100 * USDC);
            debits[i] = ClusterEscrow.Debit(payer, payees);
        }
        for (uint256 j; j < payees; ++j) {
            // casting to 'uint160' is safe because 0x20000 + j is far below 2^160
            // forge-lint: disable-next-line(unsafe-typecast)
            credits[j] = ClusterEscrow.Credit(address(uint160(0x20000 + j)), payers);
        }
        _deposit(alice, payers * payees);
        _authorize(alice, gateway, type(uint256).max);
        vm.prank(gateway);
        escrow.settle(keccak256("earlier batch"), _debits1(alice, payers * payees), credits);

        vm.cool(address(escrow));
        vm.prank(gateway);
        uint256 before = gasleft();
        escrow.settle(keccak256("measured batch"), debits, credits);
        gasUsed = before - gasleft();
    }

    function test_gas_settle100PayersOnePayee() public {
        uint256 gasUsed = _settleGas(100, 1, false);
        console.log("settle 100 payers -> 1 payee:", gasUsed, "gas; per payer:", gasUsed / 100);
        assertLt(gasUsed, 100 * 15_000);
    }

    function test_gas_settle50PayersTenPayees() public {
        uint256 gasUsed = _settleGas(50, 10, false);
        console.log("settle 50 payers -> 10 payees:", gasUsed);
        assertLt(gasUsed, 50 * 15_000 + 10 * 12_000);
        uint256 unlimited = _settleGasFresh(50, 10);
        console.log("same with unlimited caps:", unlimited);
        assertLt(unlimited, gasUsed);
    }

    function _settleGasFresh(uint256 payers, uint256 payees) internal returns (uint256) {
        setUp();
        return _settleGas(payers, payees, true);
    }
}
