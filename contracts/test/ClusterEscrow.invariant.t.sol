// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, console} from "forge-std/Test.sol";
import {ClusterEscrow} from "../src/ClusterEscrow.sol";
import {TestUSDC} from "../src/TestUSDC.sol";

/// @dev Drives the escrow with random but valid calls from a small cast of payers, gateways and payees,
///      keeps a model (ghost variables) of what must hold, and probes what must fail: settling beyond
///      balance or cap, replaying a batch, withdrawing before the thaw ends. A probe that succeeds is
///      recorded as a violation.
contract EscrowHandler is Test {
    uint256 internal constant THAW = 1 days;

    ClusterEscrow public immutable escrow;
    TestUSDC public immutable usdc;

    address[] public payers;
    address[] public gateways;
    address[] public payees;

    // model (caps: type(uint256).max is unlimited; a lowered cap waits in pendingCap until pendingAt)
    struct ModelAuth {
        uint256 cap;
        uint256 pendingCap;
        uint256 pendingAt;
    }

    mapping(address payer => mapping(address gateway => ModelAuth)) public modelAuth;
    mapping(address payer => uint256) public modelBalance;
    mapping(address payee => uint256) public modelEarnings;
    /// Signatures the escrow has consumed per payer (requestWithdrawWithSig), i.e. its expected nonce.
    mapping(address payer => uint256) public modelNonce;
    mapping(address payer => uint256) internal payerKeys;
    uint256 public totalDeposited;
    uint256 public totalSettled;
    uint256 public totalWithdrawn;
    uint256 public totalClaimed;

    // settled batches, to replay them
    address[] internal batchGateways;
    bytes32[] internal batchIds;
    uint256 internal batchCounter;

    // violations found by probes
    uint256 public overBalanceSettled;
    uint256 public overCapSettled;
    uint256 public replaysAccepted;
    uint256 public earlyWithdrawals;

    // how often each action ran (printed by the invariant test, to see the campaign did something)
    mapping(bytes32 => uint256) public calls;

    constructor(ClusterEscrow escrow_, TestUSDC usdc_) {
        escrow = escrow_;
        usdc = usdc_;
        for (uint256 i; i < 3; ++i) {
            (address payer, uint256 key) = makeAddrAndKey(string.concat("payer", vm.toString(i)));
            payers.push(payer);
            payerKeys[payer] = key;
            payees.push(makeAddr(string.concat("payee", vm.toString(i))));
        }
        gateways.push(makeAddr("gatewayA"));
        gateways.push(makeAddr("gatewayB"));
        // one payer is also a payee: its balance and its earnings are separate books
        payees.push(payers[0]);
    }

    /// A starting point where settling is possible at once: every payer funded, every gateway authorized.
    function setUpActors() external {
        for (uint256 i; i < payers.length; ++i) {
            address payer = payers[i];
            uint256 amount = (i + 1) * 1e9;
            usdc.mint(payer, amount);
            vm.startPrank(payer);
            usdc.approve(address(escrow), amount);
            escrow.deposit(amount);
            for (uint256 j; j < gateways.length; ++j) {
                uint256 cap = j == 0 ? type(uint256).max : amount / 2;
                escrow.authorizeGateway(gateways[j], cap);
                modelAuth[payer][gateways[j]].cap = cap;
            }
            vm.stopPrank();
            modelBalance[payer] += amount;
            totalDeposited += amount;
        }
    }

    /// The first payer from `seed` on (round robin) for which `ok` holds, or address(0).
    function _findPayer(uint256 seed_, function(address) view returns (bool) ok) internal view returns (address) {
        for (uint256 k; k < payers.length; ++k) {
            address payer = payers[(seed_ % payers.length + k) % payers.length];
            if (ok(payer)) return payer;
        }
        return address(0);
    }

    /// The cap in force now, per the model.
    function modelCap(address payer, address gw) public view returns (uint256 cap) {
        ModelAuth storage m = modelAuth[payer][gw];
        cap = m.cap;
        if (m.pendingAt != 0 && block.timestamp >= m.pendingAt && m.pendingCap < cap) cap = m.pendingCap;
    }

    function _hasAvailable(address payer) internal view returns (bool) {
        return escrow.accounts(payer).available > 0;
    }

    function _hasThawing(address payer) internal view returns (bool) {
        return escrow.accounts(payer).thawing > 0;
    }

    function payerCount() external view returns (uint256) {
        return payers.length;
    }

    function payeeCount() external view returns (uint256) {
        return payees.length;
    }

    function gatewayCount() external view returns (uint256) {
        return gateways.length;
    }

    function _payer(uint256 seed) internal view returns (address) {
        return payers[seed % payers.length];
    }

    function _gateway(uint256 seed) internal view returns (address) {
        return gateways[seed % gateways.length];
    }

    function _payee(uint256 seed) internal view returns (address) {
        return payees[seed % payees.length];
    }

    // ---------------------------------------------------------------------------------------------- actions

    function deposit(uint256 payerSeed, uint256 amount, bool forOther, uint256 otherSeed) external {
        calls["deposit"]++;
        address from = _payer(payerSeed);
        address beneficiary = forOther ? _payer(otherSeed) : from;
        amount = bound(amount, 1, 1e12);
        usdc.mint(from, amount);
        vm.startPrank(from);
        usdc.approve(address(escrow), amount);
        if (forOther) escrow.depositFor(beneficiary, amount);
        else escrow.deposit(amount);
        vm.stopPrank();
        modelBalance[beneficiary] += amount;
        totalDeposited += amount;
    }

    function authorize(uint256 payerSeed, uint256 gatewaySeed, uint256 cap) external {
        calls["authorize"]++;
        address payer = _payer(payerSeed);
        address gw = _gateway(gatewaySeed);
        // mostly finite caps, sometimes unlimited
        cap = cap % 8 == 0 ? type(uint256).max : bound(cap, 0, 2e12);
        vm.prank(payer);
        escrow.authorizeGateway(gw, cap);
        uint256 current = modelCap(payer, gw);
        if (cap >= current) {
            modelAuth[payer][gw] = ModelAuth(cap, 0, 0); // raised: at once
        } else {
            modelAuth[payer][gw] = ModelAuth(current, cap, block.timestamp + THAW); // lowered: after the thaw
        }
    }

    /// Lowers a finite cap a little (to 50-99% of it), so that settling during the thaw often takes the cap
    /// below the requested one: then the lower of the two must apply.
    function lowerCap(uint256 payerSeed, uint256 gatewaySeed, uint256 percent) external {
        calls["lowerCap"]++;
        address payer = _payer(payerSeed);
        address gw = _gateway(gatewaySeed);
        uint256 current = modelCap(payer, gw);
        if (current == type(uint256).max || current < 2) return;
        uint256 cap = current * bound(percent, 50, 99) / 100;
        vm.prank(payer);
        escrow.authorizeGateway(gw, cap);
        modelAuth[payer][gw] = ModelAuth(current, cap, block.timestamp + THAW);
    }

    /// Starts a withdrawal, by the payer itself or (`signed`) on its EIP-712 signature relayed by anyone.
    function requestWithdraw(uint256 payerSeed, uint256 amount, bool signed) external {
        calls["requestWithdraw"]++;
        address payer = _findPayer(payerSeed, _hasAvailable);
        if (payer == address(0)) return;
        amount = bound(amount, 1, escrow.accounts(payer).available);
        if (!signed) {
            vm.prank(payer);
            escrow.requestWithdraw(amount);
            return;
        }
        uint256 deadline = block.timestamp + (payerSeed % 3) * 1 hours;
        bytes32 structHash = keccak256(
            abi.encode(escrow.REQUEST_WITHDRAW_TYPEHASH(), payer, amount, escrow.nonces(payer), deadline)
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", escrow.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(payerKeys[payer], digest);
        vm.prank(makeAddr("relayer"));
        escrow.requestWithdrawWithSig(payer, amount, deadline, abi.encodePacked(r, s, v));
        modelNonce[payer]++;
        calls["requestWithdrawSigned"]++;
    }

    function cancelWithdraw(uint256 payerSeed) external {
        calls["cancelWithdraw"]++;
        address payer = _findPayer(payerSeed, _hasThawing);
        if (payer == address(0)) return;
        vm.prank(payer);
        escrow.cancelWithdraw();
    }

    /// Withdraws if the thaw is over; otherwise probes that an early withdrawal fails.
    function withdraw(uint256 payerSeed) external {
        calls["withdraw"]++;
        address payer = _findPayer(payerSeed, _hasThawing);
        if (payer == address(0)) return;
        ClusterEscrow.Account memory a = escrow.accounts(payer);
        if (block.timestamp < a.thawEndsAt) {
            calls["earlyProbe"]++;
            vm.prank(payer);
            try escrow.withdraw() {
                earlyWithdrawals++;
            } catch {}
            return;
        }
        uint256 before = usdc.balanceOf(payer);
        vm.prank(payer);
        uint256 amount = escrow.withdraw();
        assertEq(amount, a.thawing);
        assertEq(usdc.balanceOf(payer) - before, amount);
        modelBalance[payer] -= amount;
        totalWithdrawn += amount;
        calls["withdrawOk"]++;
    }

    function warp(uint256 seconds_) external {
        calls["warp"]++;
        vm.warp(block.timestamp + bound(seconds_, 1, 2 * THAW));
    }

    /// Settles a batch of up to 3 debits and 3 credits within every payer's balance and cap.
    function settle(uint256 gatewaySeed, uint256[3] calldata debitSeeds, uint256[3] calldata creditSeeds) external {
        calls["settle"]++;
        address gw = _gateway(gatewaySeed);
        ClusterEscrow.Debit[] memory debits = new ClusterEscrow.Debit[](3);
        uint256 n;
        uint256 total;
        for (uint256 i; i < 3; ++i) {
            address payer = _payer(debitSeeds[i]);
            // what is left for this payer after the debits already in this batch
            uint256 spent;
            for (uint256 j; j < n; ++j) {
                if (debits[j].payer == payer) spent += debits[j].amount;
            }
            uint256 room = _min(modelBalance[payer], modelCap(payer, gw));
            if (room <= spent) continue;
            uint256 amount = bound(debitSeeds[i] >> 8, 1, room - spent);
            debits[n++] = ClusterEscrow.Debit(payer, amount);
            total += amount;
        }
        if (n == 0) return;
        assembly {
            mstore(debits, n)
        }
        ClusterEscrow.Credit[] memory credits = _split(total, creditSeeds);

        bytes32 batchId = keccak256(abi.encode("batch", ++batchCounter));
        vm.prank(gw);
        escrow.settle(batchId, debits, credits);
        batchGateways.push(gw);
        batchIds.push(batchId);

        for (uint256 i; i < n; ++i) {
            address payer = debits[i].payer;
            modelBalance[payer] -= debits[i].amount;
            ModelAuth storage m = modelAuth[payer][gw];
            if (m.pendingAt != 0 && block.timestamp >= m.pendingAt) {
                m.cap = modelCap(payer, gw); // settling applies a lowered cap whose time has come
                m.pendingCap = 0;
                m.pendingAt = 0;
            }
            if (m.cap != type(uint256).max) m.cap -= debits[i].amount;
        }
        for (uint256 i; i < credits.length; ++i) {
            modelEarnings[credits[i].payee] += credits[i].amount;
        }
        totalSettled += total;
        calls["settleOk"]++;
    }

    /// Probes that a debit of one more than a payer's balance, or than its cap, is refused.
    function settleTooMuch(uint256 gatewaySeed, uint256 payerSeed, uint256 payeeSeed, bool overCap) external {
        calls["settleTooMuch"]++;
        address gw = _gateway(gatewaySeed);
        address payer = _payer(payerSeed);
        uint256 cap = modelCap(payer, gw);
        uint256 balance = modelBalance[payer];
        uint256 amount;
        if (overCap) {
            if (cap == type(uint256).max) return;
            amount = cap + 1;
        } else {
            if (balance > 1e13) return;
            amount = balance + 1;
        }
        ClusterEscrow.Debit[] memory debits = new ClusterEscrow.Debit[](1);
        debits[0] = ClusterEscrow.Debit(payer, amount);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](1);
        credits[0] = ClusterEscrow.Credit(_payee(payeeSeed), amount);
        calls["tooMuchProbe"]++;
        vm.prank(gw);
        try escrow.settle(keccak256(abi.encode("probe", ++batchCounter)), debits, credits) {
            if (amount > balance) overBalanceSettled++;
            if (amount > cap) overCapSettled++;
        } catch {}
    }

    /// Probes that a settled batch id cannot be used again by its gateway.
    function replay(uint256 index, uint256 payeeSeed) external {
        calls["replay"]++;
        if (batchIds.length == 0) return;
        index = index % batchIds.length;
        address gw = batchGateways[index];
        // find a payer that could afford a 1-unit debit, so only the replay rule can refuse it
        address payer;
        for (uint256 i; i < payers.length; ++i) {
            if (modelBalance[payers[i]] > 0 && modelCap(payers[i], gw) > 0) payer = payers[i];
        }
        if (payer == address(0)) return;
        ClusterEscrow.Debit[] memory debits = new ClusterEscrow.Debit[](1);
        debits[0] = ClusterEscrow.Debit(payer, 1);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](1);
        credits[0] = ClusterEscrow.Credit(_payee(payeeSeed), 1);
        calls["replayProbe"]++;
        vm.prank(gw);
        try escrow.settle(batchIds[index], debits, credits) {
            replaysAccepted++;
        } catch {}
    }

    function claim(uint256 payeeSeed, bool elsewhere) external {
        calls["claim"]++;
        address payee = _payee(payeeSeed);
        uint256 owed = escrow.earnings(payee);
        if (owed == 0) return;
        address to = elsewhere ? makeAddr("cold wallet") : payee;
        uint256 before = usdc.balanceOf(to);
        vm.prank(payee);
        uint256 amount = elsewhere ? escrow.claimTo(to) : escrow.claim();
        assertEq(amount, owed);
        assertEq(usdc.balanceOf(to) - before, amount);
        modelEarnings[payee] -= amount;
        totalClaimed += amount;
        calls["claimOk"]++;
    }

    // --------------------------------------------------------------------------------------------- helpers

    function _split(uint256 total, uint256[3] calldata seeds) internal view returns (ClusterEscrow.Credit[] memory) {
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](3);
        uint256 n;
        uint256 left = total;
        for (uint256 i; i < 3 && left > 0; ++i) {
            uint256 amount = i == 2 ? left : bound(seeds[i] >> 8, 1, left);
            credits[n++] = ClusterEscrow.Credit(_payee(seeds[i]), amount);
            left -= amount;
        }
        assembly {
            mstore(credits, n)
        }
        return credits;
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }
}

contract ClusterEscrowInvariantTest is Test {
    ClusterEscrow internal escrow;
    TestUSDC internal usdc;
    EscrowHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        usdc = new TestUSDC();
        escrow = new ClusterEscrow(usdc, 1 days);
        handler = new EscrowHandler(escrow, usdc);
        handler.setUpActors();
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](12);
        selectors[0] = EscrowHandler.deposit.selector;
        selectors[1] = EscrowHandler.authorize.selector;
        selectors[2] = EscrowHandler.requestWithdraw.selector;
        selectors[3] = EscrowHandler.cancelWithdraw.selector;
        selectors[4] = EscrowHandler.withdraw.selector;
        selectors[5] = EscrowHandler.warp.selector;
        selectors[6] = EscrowHandler.settle.selector;
        selectors[7] = EscrowHandler.settle.selector; // settling is the point: twice as likely
        selectors[8] = EscrowHandler.settleTooMuch.selector;
        selectors[9] = EscrowHandler.replay.selector;
        selectors[10] = EscrowHandler.claim.selector;
        selectors[11] = EscrowHandler.lowerCap.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// All the properties, checked after every call of every run (one campaign for all of them).
    function invariant_escrow() public view {
        _checkSolvencyAndBooks();
        _checkCaps();
        _checkProbesAllFailed();
    }

    /// With -vv, how much each run really did (many handler calls are no-ops by design).
    function afterInvariant() public view {
        console.log("settled", handler.calls("settleOk"), "withdrawn", handler.calls("withdrawOk"));
        console.log("claimed", handler.calls("claimOk"), "replays probed", handler.calls("replayProbe"));
        console.log(
            "withdrawals requested", handler.calls("requestWithdraw"), "of which signed", handler.calls("requestWithdrawSigned")
        );
        console.log(
            "early withdrawals probed", handler.calls("earlyProbe"), "overdraws probed", handler.calls("tooMuchProbe")
        );
    }

    /// The escrow holds exactly what it owes: balances (available + thawing) plus unclaimed earnings; and
    /// each of those matches the model, as do the totals that went in and out.
    function _checkSolvencyAndBooks() internal view {
        uint256 owed;
        for (uint256 i; i < handler.payerCount(); ++i) {
            address payer = handler.payers(i);
            ClusterEscrow.Account memory a = escrow.accounts(payer);
            owed += a.available + a.thawing;
            assertEq(a.available + a.thawing, handler.modelBalance(payer), "payer balance");
            assertEq(escrow.balanceOf(payer), handler.modelBalance(payer), "balanceOf");
            if (a.thawing == 0) assertEq(a.thawEndsAt, 0, "no thaw without thawing amount");
            assertEq(escrow.nonces(payer), handler.modelNonce(payer), "signatures consumed");
        }
        uint256 unclaimed;
        // payees are distinct addresses (one of them is also payer 0: balance and earnings are separate books)
        for (uint256 i; i < handler.payeeCount(); ++i) {
            address payee = handler.payees(i);
            unclaimed += escrow.earnings(payee);
            assertEq(escrow.earnings(payee), handler.modelEarnings(payee), "earnings");
        }
        assertEq(usdc.balanceOf(address(escrow)), owed + unclaimed, "escrow holds exactly what it owes");
        assertEq(owed, handler.totalDeposited() - handler.totalSettled() - handler.totalWithdrawn(), "balances");
        assertEq(unclaimed, handler.totalSettled() - handler.totalClaimed(), "unclaimed");
    }

    /// Caps are consumed exactly by what was settled (never below zero), unlimited caps stay unlimited, and a
    /// lowered cap applies exactly when its thaw ends.
    function _checkCaps() internal view {
        for (uint256 i; i < handler.payerCount(); ++i) {
            for (uint256 j; j < handler.gatewayCount(); ++j) {
                address payer = handler.payers(i);
                address gw = handler.gateways(j);
                assertEq(escrow.gatewayCap(payer, gw), handler.modelCap(payer, gw), "cap in force");
                (uint256 cap, uint256 pendingCap, uint256 pendingAt) = escrow.authorization(payer, gw);
                (uint256 modelCap, uint256 modelPendingCap, uint256 modelPendingAt) = handler.modelAuth(payer, gw);
                assertEq(cap, modelCap, "stored cap");
                assertEq(pendingCap, modelPendingCap, "pending cap");
                assertEq(pendingAt, modelPendingAt, "pending since");
            }
        }
    }

    /// Nothing that must fail ever succeeded: settling beyond balance or cap, a batch twice, an early withdrawal.
    function _checkProbesAllFailed() internal view {
        assertEq(handler.overBalanceSettled(), 0, "settled beyond balance");
        assertEq(handler.overCapSettled(), 0, "settled beyond cap");
        assertEq(handler.replaysAccepted(), 0, "batch settled twice");
        assertEq(handler.earlyWithdrawals(), 0, "withdrawn before the thaw ended");
    }
}
