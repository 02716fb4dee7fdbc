//! The enumerations of the modelled OCPP payloads, generated from the vendored schemas
//! (`transports/schemas/`): each holds the union of the OCPP 2.0.1 and 2.1 values, spelled as on
//! the wire. Which values a connection may send is decided by its version's schema
//! ([`crate::ocpp::schema`]), not here.
//!
//! Invariant: every value a schema allows deserialises, so a schema-valid payload never fails
//! typed decoding because of an enumeration.

string_enum! {
    /// OCPP `AttributeEnumType`.
    AttributeType {
        /// `Actual`.
        Actual = "Actual",
        /// `Target`.
        Target = "Target",
        /// `MinSet`.
        MinSet = "MinSet",
        /// `MaxSet`.
        MaxSet = "MaxSet",
    }
}

string_enum! {
    /// OCPP `AuthorizationStatusEnumType`.
    AuthorizationStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Blocked`.
        Blocked = "Blocked",
        /// `ConcurrentTx`.
        ConcurrentTx = "ConcurrentTx",
        /// `Expired`.
        Expired = "Expired",
        /// `Invalid`.
        Invalid = "Invalid",
        /// `NoCredit`.
        NoCredit = "NoCredit",
        /// `NotAllowedTypeEVSE`.
        NotAllowedTypeEVSE = "NotAllowedTypeEVSE",
        /// `NotAtThisLocation`.
        NotAtThisLocation = "NotAtThisLocation",
        /// `NotAtThisTime`.
        NotAtThisTime = "NotAtThisTime",
        /// `Unknown`.
        Unknown = "Unknown",
    }
}

string_enum! {
    /// OCPP `AuthorizeCertificateStatusEnumType`.
    AuthorizeCertificateStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `SignatureError`.
        SignatureError = "SignatureError",
        /// `CertificateExpired`.
        CertificateExpired = "CertificateExpired",
        /// `CertificateRevoked`.
        CertificateRevoked = "CertificateRevoked",
        /// `NoCertificateAvailable`.
        NoCertificateAvailable = "NoCertificateAvailable",
        /// `CertChainError`.
        CertChainError = "CertChainError",
        /// `ContractCancelled`.
        ContractCancelled = "ContractCancelled",
    }
}

string_enum! {
    /// OCPP `BootReasonEnumType`.
    BootReason {
        /// `ApplicationReset`.
        ApplicationReset = "ApplicationReset",
        /// `FirmwareUpdate`.
        FirmwareUpdate = "FirmwareUpdate",
        /// `LocalReset`.
        LocalReset = "LocalReset",
        /// `PowerUp`.
        PowerUp = "PowerUp",
        /// `RemoteReset`.
        RemoteReset = "RemoteReset",
        /// `ScheduledReset`.
        ScheduledReset = "ScheduledReset",
        /// `Triggered`.
        Triggered = "Triggered",
        /// `Unknown`.
        Unknown = "Unknown",
        /// `Watchdog`.
        Watchdog = "Watchdog",
    }
}

string_enum! {
    /// OCPP `ChargingProfileKindEnumType`.
    ChargingProfileKind {
        /// `Absolute`.
        Absolute = "Absolute",
        /// `Recurring`.
        Recurring = "Recurring",
        /// `Relative`.
        Relative = "Relative",
        /// `Dynamic`.
        Dynamic = "Dynamic",
    }
}

string_enum! {
    /// OCPP `ChargingProfilePurposeEnumType`.
    ChargingProfilePurpose {
        /// `ChargingStationExternalConstraints`.
        ChargingStationExternalConstraints = "ChargingStationExternalConstraints",
        /// `ChargingStationMaxProfile`.
        ChargingStationMaxProfile = "ChargingStationMaxProfile",
        /// `TxDefaultProfile`.
        TxDefaultProfile = "TxDefaultProfile",
        /// `TxProfile`.
        TxProfile = "TxProfile",
        /// `PriorityCharging`.
        PriorityCharging = "PriorityCharging",
        /// `LocalGeneration`.
        LocalGeneration = "LocalGeneration",
    }
}

string_enum! {
    /// OCPP `ChargingProfileStatusEnumType`.
    ChargingProfileStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
    }
}

string_enum! {
    /// OCPP `ChargingRateUnitEnumType`.
    ChargingRateUnit {
        /// `W`.
        W = "W",
        /// `A`.
        A = "A",
    }
}

string_enum! {
    /// OCPP `ChargingStateEnumType`.
    ChargingState {
        /// `Charging`.
        Charging = "Charging",
        /// `EVConnected`.
        EVConnected = "EVConnected",
        /// `SuspendedEV`.
        SuspendedEV = "SuspendedEV",
        /// `SuspendedEVSE`.
        SuspendedEVSE = "SuspendedEVSE",
        /// `Idle`.
        Idle = "Idle",
    }
}

string_enum! {
    /// OCPP `ClearChargingProfileStatusEnumType`.
    ClearChargingProfileStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Unknown`.
        Unknown = "Unknown",
    }
}

string_enum! {
    /// OCPP `ConnectorStatusEnumType`.
    ConnectorStatus {
        /// `Available`.
        Available = "Available",
        /// `Occupied`.
        Occupied = "Occupied",
        /// `Reserved`.
        Reserved = "Reserved",
        /// `Unavailable`.
        Unavailable = "Unavailable",
        /// `Faulted`.
        Faulted = "Faulted",
    }
}

string_enum! {
    /// OCPP `ControlModeEnumType`.
    ControlMode {
        /// `ScheduledControl`.
        ScheduledControl = "ScheduledControl",
        /// `DynamicControl`.
        DynamicControl = "DynamicControl",
    }
}

string_enum! {
    /// OCPP `EnergyTransferModeEnumType`.
    EnergyTransferMode {
        /// `DC`.
        Dc = "DC",
        /// `AC_single_phase`.
        AcSinglePhase = "AC_single_phase",
        /// `AC_two_phase`.
        AcTwoPhase = "AC_two_phase",
        /// `AC_three_phase`.
        AcThreePhase = "AC_three_phase",
        /// `AC_BPT`.
        AcBpt = "AC_BPT",
        /// `AC_BPT_DER`.
        AcBptDer = "AC_BPT_DER",
        /// `AC_DER`.
        AcDer = "AC_DER",
        /// `DC_BPT`.
        DcBpt = "DC_BPT",
        /// `DC_ACDP`.
        DcAcdp = "DC_ACDP",
        /// `DC_ACDP_BPT`.
        DcAcdpBpt = "DC_ACDP_BPT",
        /// `WPT`.
        Wpt = "WPT",
    }
}

string_enum! {
    /// OCPP `GetVariableStatusEnumType`.
    GetVariableStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
        /// `UnknownComponent`.
        UnknownComponent = "UnknownComponent",
        /// `UnknownVariable`.
        UnknownVariable = "UnknownVariable",
        /// `NotSupportedAttributeType`.
        NotSupportedAttributeType = "NotSupportedAttributeType",
    }
}

string_enum! {
    /// OCPP `HashAlgorithmEnumType`.
    HashAlgorithm {
        /// `SHA256`.
        Sha256 = "SHA256",
        /// `SHA384`.
        Sha384 = "SHA384",
        /// `SHA512`.
        Sha512 = "SHA512",
    }
}

string_enum! {
    /// OCPP `LocationEnumType`.
    Location {
        /// `Body`.
        Body = "Body",
        /// `Cable`.
        Cable = "Cable",
        /// `EV`.
        Ev = "EV",
        /// `Inlet`.
        Inlet = "Inlet",
        /// `Outlet`.
        Outlet = "Outlet",
        /// `Upstream`.
        Upstream = "Upstream",
    }
}

string_enum! {
    /// OCPP `MeasurandEnumType`.
    Measurand {
        /// `Current.Export`.
        CurrentExport = "Current.Export",
        /// `Current.Import`.
        CurrentImport = "Current.Import",
        /// `Current.Offered`.
        CurrentOffered = "Current.Offered",
        /// `Energy.Active.Export.Register`.
        EnergyActiveExportRegister = "Energy.Active.Export.Register",
        /// `Energy.Active.Import.Register`.
        EnergyActiveImportRegister = "Energy.Active.Import.Register",
        /// `Energy.Reactive.Export.Register`.
        EnergyReactiveExportRegister = "Energy.Reactive.Export.Register",
        /// `Energy.Reactive.Import.Register`.
        EnergyReactiveImportRegister = "Energy.Reactive.Import.Register",
        /// `Energy.Active.Export.Interval`.
        EnergyActiveExportInterval = "Energy.Active.Export.Interval",
        /// `Energy.Active.Import.Interval`.
        EnergyActiveImportInterval = "Energy.Active.Import.Interval",
        /// `Energy.Active.Net`.
        EnergyActiveNet = "Energy.Active.Net",
        /// `Energy.Reactive.Export.Interval`.
        EnergyReactiveExportInterval = "Energy.Reactive.Export.Interval",
        /// `Energy.Reactive.Import.Interval`.
        EnergyReactiveImportInterval = "Energy.Reactive.Import.Interval",
        /// `Energy.Reactive.Net`.
        EnergyReactiveNet = "Energy.Reactive.Net",
        /// `Energy.Apparent.Net`.
        EnergyApparentNet = "Energy.Apparent.Net",
        /// `Energy.Apparent.Import`.
        EnergyApparentImport = "Energy.Apparent.Import",
        /// `Energy.Apparent.Export`.
        EnergyApparentExport = "Energy.Apparent.Export",
        /// `Frequency`.
        Frequency = "Frequency",
        /// `Power.Active.Export`.
        PowerActiveExport = "Power.Active.Export",
        /// `Power.Active.Import`.
        PowerActiveImport = "Power.Active.Import",
        /// `Power.Factor`.
        PowerFactor = "Power.Factor",
        /// `Power.Offered`.
        PowerOffered = "Power.Offered",
        /// `Power.Reactive.Export`.
        PowerReactiveExport = "Power.Reactive.Export",
        /// `Power.Reactive.Import`.
        PowerReactiveImport = "Power.Reactive.Import",
        /// `SoC`.
        SoC = "SoC",
        /// `Voltage`.
        Voltage = "Voltage",
        /// `Current.Export.Offered`.
        CurrentExportOffered = "Current.Export.Offered",
        /// `Current.Export.Minimum`.
        CurrentExportMinimum = "Current.Export.Minimum",
        /// `Current.Import.Offered`.
        CurrentImportOffered = "Current.Import.Offered",
        /// `Current.Import.Minimum`.
        CurrentImportMinimum = "Current.Import.Minimum",
        /// `Display.PresentSOC`.
        DisplayPresentSOC = "Display.PresentSOC",
        /// `Display.MinimumSOC`.
        DisplayMinimumSOC = "Display.MinimumSOC",
        /// `Display.TargetSOC`.
        DisplayTargetSOC = "Display.TargetSOC",
        /// `Display.MaximumSOC`.
        DisplayMaximumSOC = "Display.MaximumSOC",
        /// `Display.RemainingTimeToMinimumSOC`.
        DisplayRemainingTimeToMinimumSOC = "Display.RemainingTimeToMinimumSOC",
        /// `Display.RemainingTimeToTargetSOC`.
        DisplayRemainingTimeToTargetSOC = "Display.RemainingTimeToTargetSOC",
        /// `Display.RemainingTimeToMaximumSOC`.
        DisplayRemainingTimeToMaximumSOC = "Display.RemainingTimeToMaximumSOC",
        /// `Display.ChargingComplete`.
        DisplayChargingComplete = "Display.ChargingComplete",
        /// `Display.BatteryEnergyCapacity`.
        DisplayBatteryEnergyCapacity = "Display.BatteryEnergyCapacity",
        /// `Display.InletHot`.
        DisplayInletHot = "Display.InletHot",
        /// `Energy.Active.Import.CableLoss`.
        EnergyActiveImportCableLoss = "Energy.Active.Import.CableLoss",
        /// `Energy.Active.Import.LocalGeneration.Register`.
        EnergyActiveImportLocalGenerationRegister = "Energy.Active.Import.LocalGeneration.Register",
        /// `Energy.Active.Setpoint.Interval`.
        EnergyActiveSetpointInterval = "Energy.Active.Setpoint.Interval",
        /// `EnergyRequest.Target`.
        EnergyRequestTarget = "EnergyRequest.Target",
        /// `EnergyRequest.Minimum`.
        EnergyRequestMinimum = "EnergyRequest.Minimum",
        /// `EnergyRequest.Maximum`.
        EnergyRequestMaximum = "EnergyRequest.Maximum",
        /// `EnergyRequest.Minimum.V2X`.
        EnergyRequestMinimumV2x = "EnergyRequest.Minimum.V2X",
        /// `EnergyRequest.Maximum.V2X`.
        EnergyRequestMaximumV2x = "EnergyRequest.Maximum.V2X",
        /// `EnergyRequest.Bulk`.
        EnergyRequestBulk = "EnergyRequest.Bulk",
        /// `Power.Active.Setpoint`.
        PowerActiveSetpoint = "Power.Active.Setpoint",
        /// `Power.Active.Residual`.
        PowerActiveResidual = "Power.Active.Residual",
        /// `Power.Export.Minimum`.
        PowerExportMinimum = "Power.Export.Minimum",
        /// `Power.Export.Offered`.
        PowerExportOffered = "Power.Export.Offered",
        /// `Power.Import.Offered`.
        PowerImportOffered = "Power.Import.Offered",
        /// `Power.Import.Minimum`.
        PowerImportMinimum = "Power.Import.Minimum",
        /// `Voltage.Minimum`.
        VoltageMinimum = "Voltage.Minimum",
        /// `Voltage.Maximum`.
        VoltageMaximum = "Voltage.Maximum",
    }
}

string_enum! {
    /// OCPP `MessageFormatEnumType`.
    MessageFormat {
        /// `ASCII`.
        Ascii = "ASCII",
        /// `HTML`.
        Html = "HTML",
        /// `URI`.
        Uri = "URI",
        /// `UTF8`.
        Utf8 = "UTF8",
        /// `QRCODE`.
        Qrcode = "QRCODE",
    }
}

string_enum! {
    /// OCPP `MobilityNeedsModeEnumType`.
    MobilityNeedsMode {
        /// `EVCC`.
        Evcc = "EVCC",
        /// `EVCC_SECC`.
        EvccSecc = "EVCC_SECC",
    }
}

string_enum! {
    /// OCPP `GenericStatusEnumType`.
    GenericStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
    }
}

string_enum! {
    /// OCPP `NotifyEVChargingNeedsStatusEnumType`.
    NotifyEVChargingNeedsStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
        /// `Processing`.
        Processing = "Processing",
        /// `NoChargingProfile`.
        NoChargingProfile = "NoChargingProfile",
    }
}

string_enum! {
    /// OCPP `OperationModeEnumType`.
    OperationMode {
        /// `Idle`.
        Idle = "Idle",
        /// `ChargingOnly`.
        ChargingOnly = "ChargingOnly",
        /// `CentralSetpoint`.
        CentralSetpoint = "CentralSetpoint",
        /// `ExternalSetpoint`.
        ExternalSetpoint = "ExternalSetpoint",
        /// `ExternalLimits`.
        ExternalLimits = "ExternalLimits",
        /// `CentralFrequency`.
        CentralFrequency = "CentralFrequency",
        /// `LocalFrequency`.
        LocalFrequency = "LocalFrequency",
        /// `LocalLoadBalancing`.
        LocalLoadBalancing = "LocalLoadBalancing",
    }
}

string_enum! {
    /// OCPP `PhaseEnumType`.
    Phase {
        /// `L1`.
        L1 = "L1",
        /// `L2`.
        L2 = "L2",
        /// `L3`.
        L3 = "L3",
        /// `N`.
        N = "N",
        /// `L1-N`.
        L1N = "L1-N",
        /// `L2-N`.
        L2N = "L2-N",
        /// `L3-N`.
        L3N = "L3-N",
        /// `L1-L2`.
        L1L2 = "L1-L2",
        /// `L2-L3`.
        L2L3 = "L2-L3",
        /// `L3-L1`.
        L3L1 = "L3-L1",
    }
}

string_enum! {
    /// OCPP `PreconditioningStatusEnumType`.
    PreconditioningStatus {
        /// `Unknown`.
        Unknown = "Unknown",
        /// `Ready`.
        Ready = "Ready",
        /// `NotReady`.
        NotReady = "NotReady",
        /// `Preconditioning`.
        Preconditioning = "Preconditioning",
    }
}

string_enum! {
    /// OCPP `ReadingContextEnumType`.
    ReadingContext {
        /// `Interruption.Begin`.
        InterruptionBegin = "Interruption.Begin",
        /// `Interruption.End`.
        InterruptionEnd = "Interruption.End",
        /// `Other`.
        Other = "Other",
        /// `Sample.Clock`.
        SampleClock = "Sample.Clock",
        /// `Sample.Periodic`.
        SamplePeriodic = "Sample.Periodic",
        /// `Transaction.Begin`.
        TransactionBegin = "Transaction.Begin",
        /// `Transaction.End`.
        TransactionEnd = "Transaction.End",
        /// `Trigger`.
        Trigger = "Trigger",
    }
}

string_enum! {
    /// OCPP `ReasonEnumType`.
    StopReason {
        /// `DeAuthorized`.
        DeAuthorized = "DeAuthorized",
        /// `EmergencyStop`.
        EmergencyStop = "EmergencyStop",
        /// `EnergyLimitReached`.
        EnergyLimitReached = "EnergyLimitReached",
        /// `EVDisconnected`.
        EVDisconnected = "EVDisconnected",
        /// `GroundFault`.
        GroundFault = "GroundFault",
        /// `ImmediateReset`.
        ImmediateReset = "ImmediateReset",
        /// `Local`.
        Local = "Local",
        /// `LocalOutOfCredit`.
        LocalOutOfCredit = "LocalOutOfCredit",
        /// `MasterPass`.
        MasterPass = "MasterPass",
        /// `Other`.
        Other = "Other",
        /// `OvercurrentFault`.
        OvercurrentFault = "OvercurrentFault",
        /// `PowerLoss`.
        PowerLoss = "PowerLoss",
        /// `PowerQuality`.
        PowerQuality = "PowerQuality",
        /// `Reboot`.
        Reboot = "Reboot",
        /// `Remote`.
        Remote = "Remote",
        /// `SOCLimitReached`.
        SOCLimitReached = "SOCLimitReached",
        /// `StoppedByEV`.
        StoppedByEV = "StoppedByEV",
        /// `TimeLimitReached`.
        TimeLimitReached = "TimeLimitReached",
        /// `Timeout`.
        Timeout = "Timeout",
        /// `ReqEnergyTransferRejected`.
        ReqEnergyTransferRejected = "ReqEnergyTransferRejected",
    }
}

string_enum! {
    /// OCPP `RecurrencyKindEnumType`.
    RecurrencyKind {
        /// `Daily`.
        Daily = "Daily",
        /// `Weekly`.
        Weekly = "Weekly",
    }
}

string_enum! {
    /// OCPP `RegistrationStatusEnumType`.
    RegistrationStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Pending`.
        Pending = "Pending",
        /// `Rejected`.
        Rejected = "Rejected",
    }
}

string_enum! {
    /// OCPP `ResetEnumType`.
    ResetType {
        /// `Immediate`.
        Immediate = "Immediate",
        /// `OnIdle`.
        OnIdle = "OnIdle",
        /// `ImmediateAndResume`.
        ImmediateAndResume = "ImmediateAndResume",
    }
}

string_enum! {
    /// OCPP `ResetStatusEnumType`.
    ResetStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
        /// `Scheduled`.
        Scheduled = "Scheduled",
    }
}

string_enum! {
    /// OCPP `SetVariableStatusEnumType`.
    SetVariableStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
        /// `UnknownComponent`.
        UnknownComponent = "UnknownComponent",
        /// `UnknownVariable`.
        UnknownVariable = "UnknownVariable",
        /// `NotSupportedAttributeType`.
        NotSupportedAttributeType = "NotSupportedAttributeType",
        /// `RebootRequired`.
        RebootRequired = "RebootRequired",
    }
}

string_enum! {
    /// OCPP `TransactionEventEnumType`.
    TransactionEventType {
        /// `Ended`.
        Ended = "Ended",
        /// `Started`.
        Started = "Started",
        /// `Updated`.
        Updated = "Updated",
    }
}

string_enum! {
    /// OCPP `TriggerReasonEnumType`.
    TriggerReason {
        /// `Authorized`.
        Authorized = "Authorized",
        /// `CablePluggedIn`.
        CablePluggedIn = "CablePluggedIn",
        /// `ChargingRateChanged`.
        ChargingRateChanged = "ChargingRateChanged",
        /// `ChargingStateChanged`.
        ChargingStateChanged = "ChargingStateChanged",
        /// `Deauthorized`.
        Deauthorized = "Deauthorized",
        /// `EnergyLimitReached`.
        EnergyLimitReached = "EnergyLimitReached",
        /// `EVCommunicationLost`.
        EVCommunicationLost = "EVCommunicationLost",
        /// `EVConnectTimeout`.
        EVConnectTimeout = "EVConnectTimeout",
        /// `MeterValueClock`.
        MeterValueClock = "MeterValueClock",
        /// `MeterValuePeriodic`.
        MeterValuePeriodic = "MeterValuePeriodic",
        /// `TimeLimitReached`.
        TimeLimitReached = "TimeLimitReached",
        /// `Trigger`.
        Trigger = "Trigger",
        /// `UnlockCommand`.
        UnlockCommand = "UnlockCommand",
        /// `StopAuthorized`.
        StopAuthorized = "StopAuthorized",
        /// `EVDeparted`.
        EVDeparted = "EVDeparted",
        /// `EVDetected`.
        EVDetected = "EVDetected",
        /// `RemoteStop`.
        RemoteStop = "RemoteStop",
        /// `RemoteStart`.
        RemoteStart = "RemoteStart",
        /// `AbnormalCondition`.
        AbnormalCondition = "AbnormalCondition",
        /// `SignedDataReceived`.
        SignedDataReceived = "SignedDataReceived",
        /// `ResetCommand`.
        ResetCommand = "ResetCommand",
        /// `CostLimitReached`.
        CostLimitReached = "CostLimitReached",
        /// `LimitSet`.
        LimitSet = "LimitSet",
        /// `OperationModeChanged`.
        OperationModeChanged = "OperationModeChanged",
        /// `RunningCost`.
        RunningCost = "RunningCost",
        /// `SoCLimitReached`.
        SoCLimitReached = "SoCLimitReached",
        /// `TariffChanged`.
        TariffChanged = "TariffChanged",
        /// `TariffNotAccepted`.
        TariffNotAccepted = "TariffNotAccepted",
        /// `TxResumed`.
        TxResumed = "TxResumed",
    }
}

string_enum! {
    /// OCPP `RequestStartStopStatusEnumType`.
    RequestStartStopStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
    }
}

string_enum! {
    /// OCPP `MessageTriggerEnumType`.
    MessageTrigger {
        /// `BootNotification`.
        BootNotification = "BootNotification",
        /// `LogStatusNotification`.
        LogStatusNotification = "LogStatusNotification",
        /// `FirmwareStatusNotification`.
        FirmwareStatusNotification = "FirmwareStatusNotification",
        /// `Heartbeat`.
        Heartbeat = "Heartbeat",
        /// `MeterValues`.
        MeterValues = "MeterValues",
        /// `SignChargingStationCertificate`.
        SignChargingStationCertificate = "SignChargingStationCertificate",
        /// `SignV2GCertificate`.
        SignV2GCertificate = "SignV2GCertificate",
        /// `SignV2G20Certificate` (2.1).
        SignV2G20Certificate = "SignV2G20Certificate",
        /// `StatusNotification`.
        StatusNotification = "StatusNotification",
        /// `TransactionEvent`.
        TransactionEvent = "TransactionEvent",
        /// `SignCombinedCertificate`.
        SignCombinedCertificate = "SignCombinedCertificate",
        /// `PublishFirmwareStatusNotification`.
        PublishFirmwareStatusNotification = "PublishFirmwareStatusNotification",
        /// `CustomTrigger` (2.1).
        CustomTrigger = "CustomTrigger",
    }
}

string_enum! {
    /// OCPP `TriggerMessageStatusEnumType`.
    TriggerMessageStatus {
        /// `Accepted`.
        Accepted = "Accepted",
        /// `Rejected`.
        Rejected = "Rejected",
        /// `NotImplemented`.
        NotImplemented = "NotImplemented",
    }
}

string_enum! {
    /// OCPP `GetChargingProfileStatusEnumType`.
    GetChargingProfileStatus {
        /// `Accepted`: a ReportChargingProfiles follows.
        Accepted = "Accepted",
        /// `NoProfiles`: nothing matched, no report follows.
        NoProfiles = "NoProfiles",
    }
}
